"""watchkeeper: keeps Zoho CRM and Bigin instant-notification channels alive."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("zoho-watchkeeper")
except PackageNotFoundError:  # running from a checkout that was not installed
    __version__ = "0.0.0+unknown"
