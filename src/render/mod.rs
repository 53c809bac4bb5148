//! The render step (pure): a [`ValidatedPbx`] becomes the Asterisk
//! configuration files and the Kubernetes objects that carry them. Same input,
//! same bytes: ordered maps, no clock, no randomness.

pub mod asterisk;
pub mod conf;
pub mod objects;
pub mod reloads;

pub use asterisk::{AsteriskConfig, METRICS_PATH, RESTART_FILES};
pub use objects::Object;

use crate::validate::ValidatedPbx;

/// Everything one PBX becomes.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    /// The Asterisk files.
    pub config: AsteriskConfig,
    /// The child objects, in apply order.
    pub objects: Vec<Object>,
}

/// Renders the config files and the objects of a validated PBX.
pub fn render(pbx: &ValidatedPbx) -> Rendered {
    let config = asterisk::render(pbx);
    let objects = objects::build(pbx, &config);
    Rendered { config, objects }
}

/// Multi-document YAML of the objects, in apply order.
pub fn objects_yaml(objects: &[Object]) -> Result<String, serde_saphyr::ser::Error> {
    let mut out = String::new();
    for object in objects {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&object.to_json())?);
    }
    Ok(out)
}
