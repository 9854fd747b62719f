pub const DEFAULT_TOPIC_TEMPLATE: &str = "push-{app}-{platform}-feedbacks";
