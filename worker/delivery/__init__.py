"""What leaves the worker after a commit: alerts to `<ns>.alerts` and signed webhooks, from the SQL outbox."""
