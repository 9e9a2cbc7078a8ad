"""Jobs Gateway: every customer's AvePoint backup jobs in one cached, normalized API."""

__version__ = "0.1.0"
