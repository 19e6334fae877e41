//! AMQP 1.0 ingress. `aliyun` builds the platform's signed login.

pub mod aliyun;
