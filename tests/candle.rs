//! The integration suite on the candle backend, with the real MiniLM and tweets.

mod suite;

suite::conformance!("candle");
