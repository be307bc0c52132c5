//! The smallest end-to-end check: a 3.1.1 and a 5.0 client exchange messages through the broker.

mod common;

use common::{v4, v5, TestBroker};

#[tokio::test]
async fn v4_subscriber_receives_v5_publish() {
    let broker = TestBroker::start().await;
    let mut sub = v4::connect(v4::options(broker.tcp(), "smoke-sub"));
    sub.connack().await;
    sub.client
        .subscribe("smoke/#", v4::QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    sub.suback().await;

    let mut publisher = v5::connect(v5::options(broker.tcp(), "smoke-pub"));
    publisher.connack().await;
    publisher
        .client
        .publish("smoke/a", v5::QoS::AtLeastOnce, false, "hello")
        .await
        .expect("publish");

    let p = sub.publish().await;
    assert_eq!(p.topic, "smoke/a");
    assert_eq!(&p.payload[..], b"hello");
    assert_eq!(p.qos, v4::QoS::AtLeastOnce);
    broker.stop().await;
}
