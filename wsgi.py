"""The WSGI entry point: ``gunicorn wsgi:app`` and ``flask --app wsgi run``."""

from i2v_app import create_app

app = create_app()
