import time
from tests.integration.test_backends import *  # noqa

def test_debug(start_process, service_env, backend_env, fakes, files):
    w = start_process("worker", **backend_env)
    client = create_app(settings_from({**service_env, **backend_env})).test_client()
    submit(client, "dbg", files.url("/nothing.png"))
    settled(client, "dbg")
    time.sleep(1)
    t = time.monotonic()
    w.stop()
    print("stop took", time.monotonic() - t)
    print(w.output[-3000:])
