//! Fuzz targets for every parser that reads bytes from outside: references, manifests and
//! indexes, the registry's paths, queries and `Range`/`Content-Range` headers, `Authorization`
//! and `WWW-Authenticate` headers, and the `sync.yaml`, `airlock.yaml` and `cnf-input.jsonc`
//! files. They are proptest properties in `tests/`, run on the stable toolchain (cargo-fuzz
//! needs nightly): briefly by the test suite (256 cases each), for minutes by
//! `bench/fuzz.sh` (`PROPTEST_CASES`). The property is always the same: an error, never a panic,
//! a 5xx or a changed byte.
