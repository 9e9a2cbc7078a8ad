"""Tickets in a PSA that follow the alerts: the connector interface (`psa`), ConnectWise's
client (`connectwise`) and the desk that works the outbox's ticket deliveries (`tickets`)."""
