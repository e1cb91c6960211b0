"""The monitoring web layer: a JSON API, Prometheus metrics and the data behind the admin dashboard."""
