"""The operator console: server-rendered pages over the admin API's handlers, served at `/` by `intake admin`.

Pages: sign-in, overview, failures (and the jobs that replay or discard them), events, tenants and inboxes,
the audit trail. Templates are Jinja2, the script is one small file (`static/console.js`), the style one
plain stylesheet; nothing is loaded from elsewhere.
"""

from workers.admin.console.routes import console_routes

__all__ = ["console_routes"]
