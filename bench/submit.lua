-- wrk script: POST /api/v1/i2v as a client would, with a unique x-request-id per request.
-- BENCH_API_KEY, BENCH_IMAGE_URL and BENCH_RUN come from the environment. At the end it prints one
-- line "BENCH_JSON {...}" with the counts of each status code and the latency percentiles.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_id", #threads)
end

function init(args)
  counter = 0
  codes = {}
  prefix = (os.getenv("BENCH_RUN") or "run") .. "-t" .. thread_id .. "-"
  headers = {
    ["Authorization"] = "Bearer " .. (os.getenv("BENCH_API_KEY") or ""),
    ["Content-Type"] = "application/json",
  }
  body = '{"image_id": "' .. (os.getenv("BENCH_IMAGE_URL") or "") .. '"}'
end

function request()
  counter = counter + 1
  headers["x-request-id"] = prefix .. counter
  return wrk.format("POST", nil, headers, body)
end

function response(status, hdrs, resp_body)
  codes[status] = (codes[status] or 0) + 1
end

function done(summary, latency, requests)
  local all = {}
  for _, thread in ipairs(threads) do
    local counted = thread:get("codes")
    for code, n in pairs(counted) do
      all[code] = (all[code] or 0) + n
    end
  end
  local parts = {}
  for code, n in pairs(all) do
    table.insert(parts, string.format('"%d": %d', code, n))
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"mean": %.1f, "max": %d, "p50": %d, "p90": %d, "p99": %d, "p999": %d}, ' ..
    '"codes": {%s}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.max, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9),
    table.concat(parts, ", ")))
end
