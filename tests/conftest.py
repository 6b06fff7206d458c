"""Session-wide servers the tests share: PostgreSQL and an S3-compatible store, each
started on first use and stopped when the session ends."""

pytest_plugins = ["tests.support.postgres", "tests.support.s3"]
