//! AMQP 1.0 ingress. `aliyun` builds the platform's signed login; `connect`
//! opens one TLS + SASL connection.

pub mod aliyun;
pub mod connect;
