"""The services the health check watches, as assets: each gets an asset check per run."""

from alianza_jobs.platform.assets import service

APP_DATABASE = service("app_database", "The application database (DATABASE_URL).")
CLOUDFLARE_STREAM_API = service(
    "cloudflare_stream_api", "Cloudflare Stream API (CLOUDFLARE_API_BASE_URL)."
)
RESEND_API = service("resend_api", "Resend email API (RESEND_API_BASE_URL).")
REPORT_STORAGE = service("report_storage", "Where daily report files are written (REPORTS_DIR).")

SERVICES = [APP_DATABASE, CLOUDFLARE_STREAM_API, RESEND_API, REPORT_STORAGE]
