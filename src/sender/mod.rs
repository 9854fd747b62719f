//! THE shared sender core: endpoints, the HTTP/2 connection pool, APNs and FCM request
//! building and response mapping, auth, and the retry policy.

pub mod apns;
pub mod attempt;
pub mod endpoint;
pub mod fcm;
pub mod gate;
pub mod guard;
pub mod http1;
pub mod pool;
pub mod retry;
pub mod tls;
pub mod transport;
pub mod webpush;

pub use apns::{ApnsAuth, ApnsConfig, ApnsError, ApnsResponse, ApnsSender, Delivery, SendError};
pub use endpoint::Endpoint;
pub use fcm::{FcmAuth, FcmConfig, FcmDelivery, FcmError, FcmSender};
pub use gate::{Gate, Health, OnFault};
pub use pool::{Pool, PoolConfig, TransportError};
pub use retry::RetryPolicy;
