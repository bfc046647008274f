//! testenv: the real components the integration and end-to-end suites run against.
