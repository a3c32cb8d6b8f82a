//! SCRAM-SHA-256 (RFC 5802, RFC 7677) against PostgreSQL-style verifiers.
//!
//! The server keeps `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, the format
//! of PostgreSQL's `pg_authid.rolpassword`. A verifier checks a password without being one:
//! a stolen config file does not let anyone log in. (pgwire's own SCRAM needs the salted
//! password itself, which is enough to log in, hence this module.)
//!
//! Channel binding (`SCRAM-SHA-256-PLUS`) is not offered; a client that could bind says so
//! with the `y` flag, which is accepted since the server did not offer it.

use std::num::NonZeroU32;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::rand::{SecureRandom, SystemRandom};
use ring::{digest, hmac, pbkdf2};

/// The iteration count of new verifiers: PostgreSQL's default.
pub const DEFAULT_ITERATIONS: u32 = 4096;

const PREFIX: &str = "SCRAM-SHA-256$";

/// What the server stores for one user.
#[derive(Clone, PartialEq, Eq)]
pub struct Verifier {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

impl std::fmt::Debug for Verifier {
    // Keys stay out of logs even though they are not passwords.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Display for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{PREFIX}{}:{}${}:{}",
            self.iterations,
            BASE64.encode(&self.salt),
            BASE64.encode(&self.stored_key),
            BASE64.encode(&self.server_key)
        )
    }
}

impl std::str::FromStr for Verifier {
    type Err = String;

    fn from_str(text: &str) -> Result<Verifier, String> {
        let shape = "expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey> \
                     (see c360 hash-password)";
        let rest = text.trim().strip_prefix(PREFIX).ok_or(shape)?;
        let (params, keys) = rest.split_once('$').ok_or(shape)?;
        let (iterations, salt) = params.split_once(':').ok_or(shape)?;
        let (stored_key, server_key) = keys.split_once(':').ok_or(shape)?;
        let iterations: u32 = iterations
            .parse()
            .map_err(|_| format!("iteration count '{iterations}' is not a number"))?;
        if iterations == 0 {
            return Err("iteration count must be positive".to_string());
        }
        let decode = |what: &str, value: &str| {
            BASE64
                .decode(value)
                .map_err(|e| format!("{what} is not base64: {e}"))
        };
        let verifier = Verifier {
            iterations,
            salt: decode("salt", salt)?,
            stored_key: decode("StoredKey", stored_key)?,
            server_key: decode("ServerKey", server_key)?,
        };
        if verifier.stored_key.len() != 32 || verifier.server_key.len() != 32 {
            return Err("StoredKey and ServerKey must be 32 bytes (SHA-256)".to_string());
        }
        Ok(verifier)
    }
}

impl Verifier {
    /// Derives a verifier from a password, with a fresh random salt.
    pub fn from_password(password: &str, iterations: u32) -> Result<Verifier, String> {
        let mut salt = vec![0u8; 16];
        SystemRandom::new()
            .fill(&mut salt)
            .map_err(|_| "the system random generator failed".to_string())?;
        Verifier::derive(password, salt, iterations)
    }

    fn derive(password: &str, salt: Vec<u8>, iterations: u32) -> Result<Verifier, String> {
        let rounds = NonZeroU32::new(iterations).ok_or("iteration count must be positive")?;
        // As libpq does: SASLprep the password, or use it as is when it cannot be prepared.
        let prepared = stringprep::saslprep(password)
            .map(|p| p.into_owned())
            .unwrap_or_else(|_| password.to_string());
        let mut salted = [0u8; 32];
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            rounds,
            &salt,
            prepared.as_bytes(),
            &mut salted,
        );
        let client_key = hmac_sha256(&salted, b"Client Key");
        Ok(Verifier {
            iterations,
            salt,
            stored_key: sha256(&client_key),
            server_key: hmac_sha256(&salted, b"Server Key"),
        })
    }

    /// A verifier no password matches, so that an unknown user goes through the same
    /// exchange as a known one and learns nothing about which names exist.
    pub fn decoy() -> Verifier {
        let mut bytes = [0u8; 80];
        // A failed fill leaves zeros: still a verifier that no proof matches by chance.
        let _ = SystemRandom::new().fill(&mut bytes);
        Verifier {
            iterations: DEFAULT_ITERATIONS,
            salt: bytes[..16].to_vec(),
            stored_key: bytes[16..48].to_vec(),
            server_key: bytes[48..80].to_vec(),
        }
    }
}

/// Why an exchange failed: the client gets only "password authentication failed".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScramError {
    /// A message that does not follow RFC 5802.
    Protocol(String),
    /// A well-formed proof for the wrong password.
    WrongPassword,
}

/// The server's state between its first message and the client's final one.
pub struct ServerFirst {
    verifier: Verifier,
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

impl ServerFirst {
    /// Answers the client-first-message: the text to send back and the state to keep.
    pub fn new(client_first: &[u8], verifier: Verifier) -> Result<ServerFirst, ScramError> {
        let mut server_nonce = [0u8; 18];
        SystemRandom::new()
            .fill(&mut server_nonce)
            .map_err(|_| ScramError::Protocol("the system random generator failed".into()))?;
        ServerFirst::with_server_nonce(client_first, verifier, &BASE64.encode(server_nonce))
    }

    fn with_server_nonce(
        client_first: &[u8],
        verifier: Verifier,
        server_nonce: &str,
    ) -> Result<ServerFirst, ScramError> {
        let text = std::str::from_utf8(client_first)
            .map_err(|_| ScramError::Protocol("client-first-message is not UTF-8".into()))?;
        // gs2-header: cbind-flag "," [authzid] ","
        let mut parts = text.splitn(3, ',');
        let flag = parts.next().unwrap_or_default();
        let authzid = parts.next().unwrap_or_default();
        let bare = parts
            .next()
            .ok_or_else(|| ScramError::Protocol("client-first-message too short".into()))?;
        match flag {
            "n" | "y" => {}
            _ => {
                return Err(ScramError::Protocol(
                    "channel binding was not offered by the server".into(),
                ));
            }
        }
        // The user name comes from the startup packet, as in PostgreSQL; libpq sends "n=,".
        let client_nonce = bare
            .split(',')
            .find_map(|attribute| attribute.strip_prefix("r="))
            .filter(|nonce| !nonce.is_empty())
            .ok_or_else(|| ScramError::Protocol("client nonce missing".into()))?;
        let nonce = format!("{client_nonce}{server_nonce}");
        let server_first = format!(
            "r={nonce},s={},i={}",
            BASE64.encode(&verifier.salt),
            verifier.iterations
        );
        Ok(ServerFirst {
            verifier,
            gs2_header: format!("{flag},{authzid},"),
            client_first_bare: bare.to_string(),
            server_first,
            nonce,
        })
    }

    pub fn message(&self) -> &str {
        &self.server_first
    }

    /// Checks the client-final-message's proof; on success, the server-final-message.
    pub fn finish(self, client_final: &[u8]) -> Result<String, ScramError> {
        let text = std::str::from_utf8(client_final)
            .map_err(|_| ScramError::Protocol("client-final-message is not UTF-8".into()))?;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or_else(|| ScramError::Protocol("client proof missing".into()))?;
        let mut attributes = without_proof.split(',');
        let binding = attributes.next().and_then(|a| a.strip_prefix("c="));
        if binding != Some(BASE64.encode(&self.gs2_header).as_str()) {
            return Err(ScramError::Protocol("channel binding mismatch".into()));
        }
        if attributes.next().and_then(|a| a.strip_prefix("r=")) != Some(self.nonce.as_str()) {
            return Err(ScramError::Protocol("nonce mismatch".into()));
        }
        let proof = BASE64
            .decode(proof)
            .map_err(|_| ScramError::Protocol("client proof is not base64".into()))?;
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let client_signature = hmac_sha256(&self.verifier.stored_key, auth_message.as_bytes());
        if proof.len() != client_signature.len() {
            return Err(ScramError::WrongPassword);
        }
        let client_key: Vec<u8> = proof
            .iter()
            .zip(&client_signature)
            .map(|(a, b)| a ^ b)
            .collect();
        if !constant_time_eq(&sha256(&client_key), &self.verifier.stored_key) {
            return Err(ScramError::WrongPassword);
        }
        let server_signature = hmac_sha256(&self.verifier.server_key, auth_message.as_bytes());
        Ok(format!("v={}", BASE64.encode(server_signature)))
    }
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), message)
        .as_ref()
        .to_vec()
}

fn sha256(data: &[u8]) -> Vec<u8> {
    digest::digest(&digest::SHA256, data).as_ref().to_vec()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client side of the exchange, as libpq computes it.
    fn client_final(password: &str, client_first_bare: &str, server_first: &str) -> String {
        let mut fields = server_first.split(',');
        let nonce = fields.next().unwrap().strip_prefix("r=").unwrap();
        let salt = BASE64
            .decode(fields.next().unwrap().strip_prefix("s=").unwrap())
            .unwrap();
        let iterations: u32 = fields
            .next()
            .unwrap()
            .strip_prefix("i=")
            .unwrap()
            .parse()
            .unwrap();
        let mut salted = [0u8; 32];
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            NonZeroU32::new(iterations).unwrap(),
            &salt,
            password.as_bytes(),
            &mut salted,
        );
        let client_key = hmac_sha256(&salted, b"Client Key");
        let without_proof = format!("c=biws,r={nonce}");
        let auth = format!("{client_first_bare},{server_first},{without_proof}");
        let signature = hmac_sha256(&sha256(&client_key), auth.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(a, b)| a ^ b)
            .collect();
        format!("{without_proof},p={}", BASE64.encode(proof))
    }

    #[test]
    fn verifier_round_trips_through_text() {
        let verifier = Verifier::from_password("s3cret", 4096).unwrap();
        let text = verifier.to_string();
        assert!(text.starts_with("SCRAM-SHA-256$4096:"), "{text}");
        assert_eq!(text.parse::<Verifier>().unwrap(), verifier);
        assert!("md5abc".parse::<Verifier>().is_err());
        assert!(
            "SCRAM-SHA-256$x:c2FsdA==$YQ==:Yg=="
                .parse::<Verifier>()
                .is_err()
        );
    }

    #[test]
    fn rfc_7677_example_exchange() {
        let salt = BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let verifier = Verifier::derive("pencil", salt, 4096).unwrap();
        let first = ServerFirst::with_server_nonce(
            b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
            verifier,
            "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
        )
        .unwrap();
        assert_eq!(
            first.message(),
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        let server_final = first
            .finish(
                b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                  p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            )
            .unwrap();
        assert_eq!(
            server_final,
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
    }

    #[test]
    fn right_password_passes_and_wrong_one_fails() {
        let verifier = Verifier::from_password("pencil", 4096).unwrap();
        for (password, ok) in [("pencil", true), ("pencils", false)] {
            let bare = "n=,r=rOprNGfwEbeRWgbNEkqO";
            let first =
                ServerFirst::new(format!("n,,{bare}").as_bytes(), verifier.clone()).unwrap();
            let server_first = first.message().to_string();
            let reply = client_final(password, bare, &server_first);
            let result = first.finish(reply.as_bytes());
            assert_eq!(result.is_ok(), ok, "{password}: {result:?}");
            if !ok {
                assert_eq!(result.unwrap_err(), ScramError::WrongPassword);
            }
        }
    }

    #[test]
    fn tampered_messages_are_refused() {
        let verifier = Verifier::from_password("pencil", 4096).unwrap();
        assert!(ServerFirst::new(b"p=tls-server-end-point,,n=,r=abc", verifier.clone()).is_err());
        assert!(ServerFirst::new(b"n,,n=,", verifier.clone()).is_err());
        let first = ServerFirst::new(b"n,,n=,r=abc", verifier).unwrap();
        assert!(matches!(
            first.finish(b"c=biws,r=wrongnonce,p=AAAA"),
            Err(ScramError::Protocol(_))
        ));
    }
}
