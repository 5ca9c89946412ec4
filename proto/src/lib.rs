//! The gRPC contract of imprint: `.proto` files under `proto/imprint/v1/`
//! compiled with `tonic-prost-build` into `OUT_DIR`.
//!
//! Empty until the agent and daemon land (issues 3 and 4): they meet here,
//! and the contract is written together with its first server.
