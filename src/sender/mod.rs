//! THE shared sender core: endpoints, the HTTP/2 connection pool, APNs and FCM request
//! building and response mapping, auth, and the retry policy.

pub mod cli;
