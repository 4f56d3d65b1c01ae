"""The admin process: the control plane's API and console, apart from the ingress.

The app is built by `workers.admin.app.create_app`; this package imports none of its submodules, so importing
one piece (the background jobs, the process state) does not load the whole app.
"""
