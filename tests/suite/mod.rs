//! Checks that every backend must pass, written once against the backend-adapter
//! trait and stamped out per backend by [`conformance!`]. They use the real
//! assets of ASSETS.md (fetched into the cache on first use): MiniLM and tweets
//! for BERT, Fashion-MNIST images for a tiny ViT.

pub mod checks;
pub mod fixtures;

/// Generates one `#[test]` per check for a backend.
macro_rules! conformance {
    ($backend:literal) => {
        #[test]
        fn golden_sentence_embeddings() {
            suite::checks::golden_sentence_embeddings($backend);
        }
        #[test]
        fn saved_adapter_has_peft_layout_and_reloads_identically() {
            suite::checks::saved_adapter_has_peft_layout_and_reloads_identically($backend);
        }
        #[test]
        fn rank_and_alpha_patterns_set_per_module_shapes_and_scales() {
            suite::checks::rank_and_alpha_patterns_set_per_module_shapes_and_scales($backend);
        }
        #[test]
        fn same_seed_gives_identical_losses() {
            suite::checks::same_seed_gives_identical_losses($backend);
        }
        #[test]
        fn short_run_lowers_validation_loss() {
            suite::checks::short_run_lowers_validation_loss($backend);
        }
        #[test]
        fn auto_batch_keeps_the_effective_batch() {
            suite::checks::auto_batch_keeps_the_effective_batch($backend);
        }
        #[test]
        fn accumulated_micro_batches_equal_one_batch() {
            suite::checks::accumulated_micro_batches_equal_one_batch($backend);
        }
        #[test]
        fn merge_is_exact_and_base_weights_stay_unchanged() {
            suite::checks::merge_is_exact_and_base_weights_stay_unchanged($backend);
        }
        #[test]
        fn run_writes_outputs_that_predict_and_eval_read() {
            suite::checks::run_writes_outputs_that_predict_and_eval_read($backend);
        }
        #[test]
        fn bad_pipelines_fail_before_writing_anything() {
            suite::checks::bad_pipelines_fail_before_writing_anything($backend);
        }
        #[test]
        fn vit_same_seed_gives_identical_losses() {
            suite::checks::vit_same_seed_gives_identical_losses($backend);
        }
        #[test]
        fn vit_full_training_then_lora_each_lower_validation_loss() {
            suite::checks::vit_full_training_then_lora_each_lower_validation_loss($backend);
        }
        #[test]
        fn vit_saved_adapter_has_peft_layout_and_reloads_identically() {
            suite::checks::vit_saved_adapter_has_peft_layout_and_reloads_identically($backend);
        }
        #[test]
        fn vit_full_run_saves_a_base_that_a_lora_run_adapts() {
            suite::checks::vit_full_run_saves_a_base_that_a_lora_run_adapts($backend);
        }
    };
}
pub(crate) use conformance;
