// The `fleetsnap-failpoints` binary: the executor's own `main`, built only with the
// `failpoints` feature (see src/failpoint.rs and Cargo.toml). A file of its own, since cargo
// warns about one source file shared by two binary targets.
include!("main.rs");
