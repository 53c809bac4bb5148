//! The `client-config` command's shell: reads a PBX's clients Secret (and,
//! for an operator-issued certificate, its CA) from the cluster, and prints
//! one user's configuration in the format asked for ([`crate::clients`]
//! builds them), a QR code of the provisioning link included.

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};

use crate::clients::{self, PbxClient, UserClient};
use crate::names;

/// What `client-config` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// JsSIP: `{socket, ua, call, echo}`.
    Jssip,
    /// SIP.js: `{server, options, echo}` for `new SIP.Web.SimpleUser(server, options)`.
    Sipjs,
    /// The user's `sip:` URI and the web phone's provisioning link.
    Uri,
    /// The provisioning link as a QR code (terminal; PNG with --output).
    Qr,
    /// The CA certificate clients must trust (PEM; SelfSigned mode).
    Ca,
}

/// Errors of `client-config`, each with a stable category.
#[derive(Debug, thiserror::Error)]
pub enum ClientConfigError {
    /// The apiserver could not be reached or refused the read.
    #[error("{0}")]
    Kube(#[from] kube::Error),
    /// No clients Secret: the operator has not rendered the PBX (yet).
    #[error(
        "no client configuration for {namespace}/{pbx}: Secret {secret} not found (is the operator running, and is the WebRtcPbx ConfigRendered? kubectl -n {namespace} get wpbx {pbx})"
    )]
    NoSecret {
        /// Namespace.
        namespace: String,
        /// PBX.
        pbx: String,
        /// The Secret looked for.
        secret: String,
    },
    /// The PBX has no such user.
    #[error("{namespace}/{pbx} has no user {user}; its users: {known}")]
    NoUser {
        /// Namespace.
        namespace: String,
        /// PBX.
        pbx: String,
        /// The user asked for.
        user: String,
        /// The users it has.
        known: String,
    },
    /// A record of the Secret does not parse (written by another version?).
    #[error("Secret {secret}, key {key}: {message}")]
    Record {
        /// The Secret.
        secret: String,
        /// The key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// `--format ca` for a PBX whose certificate the operator does not issue.
    #[error(
        "{0} does not use an operator-issued certificate (tls.mode is not SelfSigned): clients trust its issuer, not a CA of the PBX"
    )]
    NoCa(String),
    /// The QR code could not be made (the link is too long).
    #[error("cannot encode the link as a QR code: {0}")]
    Qr(String),
    /// The PNG could not be written.
    #[error("{path}: {message}")]
    Output {
        /// The file.
        path: String,
        /// The cause.
        message: String,
    },
}

impl ClientConfigError {
    /// A stable category for logs and exit messages.
    pub fn category(&self) -> &'static str {
        match self {
            ClientConfigError::Kube(_) => "kube",
            ClientConfigError::NoSecret { .. } | ClientConfigError::NoUser { .. } => "not-found",
            ClientConfigError::Record { .. } => "record",
            ClientConfigError::NoCa(_) => "no-ca",
            ClientConfigError::Qr(_) => "qr",
            ClientConfigError::Output { .. } => "output",
        }
    }
}

/// What to print: stdout, and a note for stderr.
#[derive(Debug, Default)]
pub struct Printed {
    /// The configuration.
    pub stdout: String,
    /// How to trust the CA, when clients must.
    pub note: Option<String>,
}

/// Reads the records of `user` of PBX `namespace/pbx` and builds `format`;
/// with [`Format::Qr`] and `png`, also writes the QR code there.
pub async fn run(
    client: Client,
    namespace: &str,
    pbx: &str,
    user: &str,
    format: Format,
    png: Option<&std::path::Path>,
) -> Result<Printed, ClientConfigError> {
    let secrets = Api::<Secret>::namespaced(client, namespace);
    let name = names::clients_secret_name(pbx);
    let secret = secrets
        .get_opt(&name)
        .await?
        .ok_or_else(|| ClientConfigError::NoSecret {
            namespace: namespace.into(),
            pbx: pbx.into(),
            secret: name.clone(),
        })?;
    let (pbx_record, user_record) = records(&secret, namespace, pbx, user)?;
    let ca = match (&pbx_record.ca_secret, format) {
        (Some(tls), Format::Ca) => {
            let s = secrets.get(tls).await?;
            Some(text(&s, crate::certs::CA_CRT)?)
        }
        (None, Format::Ca) => return Err(ClientConfigError::NoCa(format!("{namespace}/{pbx}"))),
        _ => None,
    };
    let note = pbx_record.ca_secret.as_ref().filter(|_| format != Format::Ca).map(|_| {
        format!(
            "The PBX's certificate is issued by its own CA: browsers must trust it first:\n  {}",
            clients::trust_hint(namespace, pbx, user)
        )
    });
    let stdout = match format {
        Format::Jssip => pretty(&clients::jssip(&pbx_record, &user_record)),
        Format::Sipjs => pretty(&clients::sipjs(&pbx_record, &user_record)),
        Format::Uri => format!(
            "{}\n{}\n",
            clients::sip_uri(&pbx_record, &user_record),
            clients::phone_link(&pbx_record, &user_record)
        ),
        Format::Qr => {
            let link = clients::phone_link(&pbx_record, &user_record);
            let code = qrcode::QrCode::new(link.as_bytes())
                .map_err(|e| ClientConfigError::Qr(e.to_string()))?;
            if let Some(path) = png {
                write_png(&code, path)?;
            }
            terminal(&code)
        }
        Format::Ca => ca.unwrap_or_default(),
    };
    Ok(Printed { stdout, note })
}

/// The PBX-wide and the user's record from the clients Secret.
pub fn records(
    secret: &Secret,
    namespace: &str,
    pbx: &str,
    user: &str,
) -> Result<(PbxClient, UserClient), ClientConfigError> {
    let pbx_record: PbxClient = parse(secret, names::CLIENTS_PBX_KEY)?;
    let key = names::client_user_key(user);
    if secret.data.as_ref().is_none_or(|d| !d.contains_key(&key)) {
        let mut known: Vec<String> = secret
            .data
            .iter()
            .flat_map(|d| d.keys())
            .filter_map(|k| k.strip_prefix("user-")?.strip_suffix(".json"))
            .map(names::extension_of_key)
            .collect();
        known.sort();
        return Err(ClientConfigError::NoUser {
            namespace: namespace.into(),
            pbx: pbx.into(),
            user: user.into(),
            known: if known.is_empty() {
                "none (spec.users is empty)".into()
            } else {
                known.join(", ")
            },
        });
    }
    Ok((pbx_record, parse(secret, &key)?))
}

fn text(secret: &Secret, key: &str) -> Result<String, ClientConfigError> {
    let bad = |message: &str| ClientConfigError::Record {
        secret: secret.metadata.name.clone().unwrap_or_default(),
        key: key.into(),
        message: message.into(),
    };
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .ok_or_else(|| bad("missing"))?;
    String::from_utf8(bytes.0.clone()).map_err(|_| bad("not UTF-8"))
}

fn parse<T: serde::de::DeserializeOwned>(
    secret: &Secret,
    key: &str,
) -> Result<T, ClientConfigError> {
    serde_json::from_str(&text(secret, key)?).map_err(|e| ClientConfigError::Record {
        secret: secret.metadata.name.clone().unwrap_or_default(),
        key: key.into(),
        message: e.to_string(),
    })
}

fn pretty(value: &serde_json::Value) -> String {
    // A serde_json::Value always serializes.
    format!(
        "{}\n",
        serde_json::to_string_pretty(value).unwrap_or_default()
    )
}

/// The code in half-block characters, light on dark as phones read from a
/// terminal best.
fn terminal(code: &qrcode::QrCode) -> String {
    use qrcode::render::unicode::Dense1x2;
    let text = code
        .render::<Dense1x2>()
        .dark_color(Dense1x2::Light)
        .light_color(Dense1x2::Dark)
        .build();
    format!("{text}\n")
}

/// Pixels per module and modules of quiet zone in the PNG.
const PNG_SCALE: usize = 8;
const PNG_QUIET: usize = 4;

/// The code as an 8-bit greyscale PNG.
pub fn png_bytes(code: &qrcode::QrCode) -> Result<Vec<u8>, String> {
    let modules = code.width();
    let colors = code.to_colors();
    let side = (modules + 2 * PNG_QUIET) * PNG_SCALE;
    let mut pixels = vec![255u8; side * side];
    for (i, color) in colors.iter().enumerate() {
        if *color != qrcode::Color::Dark {
            continue;
        }
        let (mx, my) = (i % modules + PNG_QUIET, i / modules + PNG_QUIET);
        for y in my * PNG_SCALE..(my + 1) * PNG_SCALE {
            pixels[y * side + mx * PNG_SCALE..y * side + (mx + 1) * PNG_SCALE].fill(0);
        }
    }
    let side = u32::try_from(side).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, side, side);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(|e| e.to_string())?;
    writer
        .write_image_data(&pixels)
        .map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    Ok(out)
}

fn write_png(code: &qrcode::QrCode, path: &std::path::Path) -> Result<(), ClientConfigError> {
    let failed = |message: String| ClientConfigError::Output {
        path: path.display().to_string(),
        message,
    };
    let bytes = png_bytes(code).map_err(failed)?;
    std::fs::write(path, bytes).map_err(|e| failed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    fn secret(entries: &[(&str, &str)]) -> Secret {
        Secret {
            metadata: kube::core::ObjectMeta {
                name: Some("demo-clients".into()),
                ..Default::default()
            },
            data: Some(
                entries
                    .iter()
                    .map(|(k, v)| ((*k).to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Secret::default()
        }
    }

    const PBX: &str = r#"{"wssUrl":"wss://d:8089/ws","domain":"d","echoExtension":"*43","iceServers":[],"keepAliveSeconds":30,"phoneUrl":"https://d:8089/static/phone/index.html"}"#;

    #[test]
    fn a_missing_user_names_the_users_there_are() {
        let s = secret(&[
            ("pbx.json", PBX),
            ("user-1001.json", r#"{"extension":"1001","password":"x"}"#),
            ("user-star99.json", r#"{"extension":"*99","password":"y"}"#),
        ]);
        let (_, user) = records(&s, "ns", "demo", "*99").unwrap();
        assert_eq!(user.password, "y");
        let e = records(&s, "ns", "demo", "1002").unwrap_err();
        assert_eq!(e.category(), "not-found");
        assert_eq!(
            e.to_string(),
            "ns/demo has no user 1002; its users: *99, 1001"
        );
    }

    #[test]
    fn a_bad_record_names_its_key() {
        let s = secret(&[("pbx.json", "{")]);
        let e = records(&s, "ns", "demo", "1001").unwrap_err();
        assert_eq!(e.category(), "record");
        assert!(
            e.to_string()
                .starts_with("Secret demo-clients, key pbx.json:"),
            "{e}"
        );
    }

    #[test]
    fn the_png_is_the_code_scaled_with_a_quiet_zone() {
        let code = qrcode::QrCode::new(b"https://d:8089/static/phone/index.html#user=1").unwrap();
        let bytes = png_bytes(&code).unwrap();
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let reader = decoder.read_info().unwrap();
        let info = reader.info();
        let side = (code.width() + 2 * PNG_QUIET) * PNG_SCALE;
        assert_eq!((info.width as usize, info.height as usize), (side, side));
        assert_eq!(info.color_type, png::ColorType::Grayscale);
        assert_eq!(
            decode(&bytes_of(&code)),
            "https://d:8089/static/phone/index.html#user=1"
        );
    }

    fn bytes_of(code: &qrcode::QrCode) -> Vec<u8> {
        png_bytes(code).unwrap()
    }

    /// What a QR reader makes of the PNG (rqrr).
    fn decode(png_bytes: &[u8]) -> String {
        let mut reader = png::Decoder::new(std::io::Cursor::new(png_bytes.to_vec()))
            .read_info()
            .unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let frame = reader.next_frame(&mut buf).unwrap();
        let (w, h) = (frame.width as usize, frame.height as usize);
        let mut img = rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| buf[y * w + x]);
        let grids = img.detect_grids();
        assert_eq!(grids.len(), 1);
        grids[0].decode().unwrap().1
    }
}
