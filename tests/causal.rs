//! The causal language model (SmolLM2-135M-Instruct over its Q4_1 GGUF) on
//! both backends, with the golden values of ASSETS.md: the greedy answer to
//! the ChatML prompt and the mean NLL of a fixed text. Both backends are in one
//! build (like `cross_backend`), so each check runs once per backend.

mod causal_suite;

// Link the crates whose registrations the checks use.
use lora_cli as _;

macro_rules! causal_checks {
    ($backend:ident) => {
        mod $backend {
            #[test]
            fn greedy_answer_is_paris() {
                crate::causal_suite::greedy_answer_is_paris(stringify!($backend));
            }
            #[test]
            fn nll_matches_the_golden_value() {
                crate::causal_suite::nll_matches_the_golden_value(stringify!($backend));
            }
            #[test]
            fn packed_rows_give_each_conversation_its_padded_loss() {
                crate::causal_suite::packed_rows_give_each_conversation_its_padded_loss(stringify!($backend));
            }
            #[test]
            fn checkpointed_step_matches_the_plain_one() {
                crate::causal_suite::checkpointed_step_matches_the_plain_one(stringify!($backend));
            }
            #[test]
            fn peft_adapter_matches_transformers() {
                crate::causal_suite::peft_adapter_matches_transformers(stringify!($backend));
            }
            #[test]
            fn training_lowers_the_loss_and_saves_a_peft_adapter() {
                crate::causal_suite::training_lowers_the_loss_and_saves_a_peft_adapter(stringify!($backend));
            }
        }
    };
}

causal_checks!(candle);
causal_checks!(burn);

#[test]
fn bad_inputs_exit_2_and_write_nothing() {
    causal_suite::bad_inputs_exit_2_and_write_nothing("candle");
}
