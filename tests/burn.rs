//! The integration suite on the burn backend, with the real MiniLM and tweets.

mod suite;

suite::conformance!("burn");
