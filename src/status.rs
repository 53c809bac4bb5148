//! The status step: condition types and reasons, as constants, so every
//! writer and reader (tests, Argo CD health checks) spells them one way.
//! The pure computation of conditions from observed facts grows here.

/// Condition types.
pub mod types {
    /// The configuration was rendered from a valid spec.
    pub const CONFIG_RENDERED: &str = "ConfigRendered";
    /// The serving certificate is usable.
    pub const CERTIFICATE_READY: &str = "CertificateReady";
    /// The Asterisk pod is running and ready.
    pub const WORKLOAD_READY: &str = "WorkloadReady";
    /// The WSS probe connected.
    pub const WSS_REACHABLE: &str = "WssReachable";
    /// The REGISTER probe succeeded.
    pub const SIP_REGISTERED: &str = "SipRegistered";
    /// The echo-call probe heard its audio back.
    pub const ECHO_CALL_HEALTHY: &str = "EchoCallHealthy";
    /// Summary: everything above that is enabled is True.
    pub const READY: &str = "Ready";
    /// kstatus: the controller is working towards the desired state.
    pub const RECONCILING: &str = "Reconciling";
    /// kstatus: progress is blocked until the user changes something.
    pub const STALLED: &str = "Stalled";
}

/// Condition reasons.
pub mod reasons {
    /// The spec has a value the operator cannot use.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// A referenced Secret or key is missing.
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    /// A referenced ConfigMap or key is missing.
    pub const CONFIG_MAP_NOT_FOUND: &str = "ConfigMapNotFound";
    /// Rendering succeeded.
    pub const RENDERED: &str = "Rendered";
}
