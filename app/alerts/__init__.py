"""Alerts beyond their rules (`app.alert_rules`, pure, applied by the store in the merge):
the notices that wake readers and senders, the overdue sweep, and the webhook senders."""
