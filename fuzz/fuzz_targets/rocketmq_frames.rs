#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| amqp_bridge::fuzzing::rocketmq_frames(data));
