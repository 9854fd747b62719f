//! Configuration: YAML file < PUSHER_* environment < CLI flags, validated before anything
//! starts (DESIGN.md §7). Filled in with the pipeline (issue 4).
