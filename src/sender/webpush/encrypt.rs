//! aes128gcm content encoding (RFC 8188) with the web push key agreement (RFC 8291), on
//! `ring`: its assembly P-256 makes the per-message key pair and ECDH several times cheaper
//! than pure Rust, and each push needs both. The body is one record, exactly as browsers
//! expect: `salt(16) | rs(4) | idlen(1)=65 | sender public key(65) | ciphertext | tag(16)`.

use crate::push::webpush::{HEADER_LEN, MAX_PLAINTEXT};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};
use ring::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey, ECDH_P256};
use ring::hkdf::{KeyType, Salt, HKDF_SHA256};
use ring::rand::SecureRandom;

/// The record size announced in the header: 4096, as browsers and the npm `web-push`
/// library use (one record always fits, since a body is at most 4096 bytes).
const RECORD_SIZE: u32 = 4096;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncryptError {
    #[error("payload is {0} bytes, over the {MAX_PLAINTEXT} bytes that fit one web push message")]
    TooLarge(usize),
    #[error("the subscription's p256dh key is not a P-256 public key")]
    BadPeerKey,
    /// Ours, not the subscription's: the system's randomness, or HKDF or AES-GCM failing.
    #[error("the system's random number generator or a cipher failed")]
    Random,
}

/// `ring::hkdf` wants the output length as a key type.
struct Len(usize);

impl KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// Encrypts `plaintext` for the browser whose public key is `ua_public` (65 bytes) and auth
/// secret is `auth`, with a fresh key pair and salt from `rng`.
pub fn encrypt(
    plaintext: &[u8],
    ua_public: &[u8; 65],
    auth: &[u8; 16],
    rng: &dyn SecureRandom,
) -> Result<Vec<u8>, EncryptError> {
    if plaintext.len() > MAX_PLAINTEXT {
        return Err(EncryptError::TooLarge(plaintext.len()));
    }
    let ephemeral =
        EphemeralPrivateKey::generate(&ECDH_P256, rng).map_err(|_| EncryptError::Random)?;
    let as_public = ephemeral
        .compute_public_key()
        .map_err(|_| EncryptError::Random)?;
    let mut salt = [0u8; 16];
    rng.fill(&mut salt).map_err(|_| EncryptError::Random)?;

    // RFC 8291 §3.4: IKM = HKDF(auth, ECDH secret, "WebPush: info" 0 ua_public as_public).
    let mut ikm = [0u8; 32];
    agreement::agree_ephemeral(
        ephemeral,
        &UnparsedPublicKey::new(&ECDH_P256, ua_public),
        |shared| {
            let info: [&[u8]; 3] = [b"WebPush: info\0", ua_public, as_public.as_ref()];
            Salt::new(HKDF_SHA256, auth)
                .extract(shared)
                .expand(&info, Len(32))
                .and_then(|okm| okm.fill(&mut ikm))
        },
    )
    .map_err(|_| EncryptError::BadPeerKey)?
    // HKDF's own failure: ours, not the key's.
    .map_err(|_| EncryptError::Random)?;

    // RFC 8188 §2.2-2.3: content key and nonce from the salt; one record, sequence 0.
    let prk = Salt::new(HKDF_SHA256, &salt).extract(&ikm);
    let expand = |info: &'static [u8], out: &mut [u8]| {
        prk.expand(&[info], Len(out.len()))
            .and_then(|okm| okm.fill(out))
    };
    let mut cek = [0u8; 16];
    let mut nonce = [0u8; 12];
    expand(b"Content-Encoding: aes128gcm\0", &mut cek).map_err(|_| EncryptError::Random)?;
    expand(b"Content-Encoding: nonce\0", &mut nonce).map_err(|_| EncryptError::Random)?;
    let key =
        LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &cek).map_err(|_| EncryptError::Random)?);

    let mut body = Vec::with_capacity(HEADER_LEN + plaintext.len() + 1 + 16);
    body.extend_from_slice(&salt);
    body.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    body.push(65);
    body.extend_from_slice(as_public.as_ref());
    body.extend_from_slice(plaintext);
    // The last (and only) record's padding delimiter.
    body.push(2);
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::empty(),
            &mut body[HEADER_LEN..],
        )
        .map_err(|_| EncryptError::Random)?;
    body.extend_from_slice(tag.as_ref());
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn b64(s: &str) -> Vec<u8> {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .expect("vector is base64url")
    }

    /// RFC 8291 Appendix A: with the vector's sender key and salt, our body is the vector's
    /// byte for byte.
    #[test]
    #[allow(deprecated)]
    fn rfc8291_appendix_a_encrypts() {
        let as_private = b64("yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw");
        let salt = b64("DGv6ra1nlYgDCS1FRnbzlw");
        let ua_public: [u8; 65] = b64(
            "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4",
        )
        .try_into()
        .expect("65 bytes");
        let auth: [u8; 16] = b64("BTBZMqHH6r4Tts7J_aSIgg").try_into().expect("16 bytes");
        let rng = ring::test::rand::FixedSliceSequenceRandom {
            bytes: &[&as_private, &salt],
            current: core::cell::UnsafeCell::new(0),
        };
        let body = encrypt(
            b"When I grow up, I want to be a watermelon",
            &ua_public,
            &auth,
            &rng,
        )
        .expect("encrypts");
        let expected = b64("DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN");
        assert_eq!(body, expected);
    }

    /// What we encrypt, the independent RustCrypto decryption (push::webpush) reads.
    #[test]
    fn round_trips_through_the_reference_decryption() {
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        let (secret, auth) = crate::push::webpush::generated_keys("round-trip");
        let public: [u8; 65] = secret
            .public_key()
            .to_encoded_point(false)
            .as_bytes()
            .try_into()
            .expect("65 bytes");
        let rng = ring::rand::SystemRandom::new();
        for len in [0, 1, 100, MAX_PLAINTEXT] {
            let plain = vec![b'x'; len];
            let body = encrypt(&plain, &public, &auth, &rng).expect("encrypts");
            assert!(body.len() <= crate::push::webpush::MAX_BODY);
            let back = crate::push::webpush::decrypt(&body, &secret, &auth).expect("decrypts");
            assert_eq!(back, plain);
        }
        assert_eq!(
            encrypt(&vec![0; MAX_PLAINTEXT + 1], &public, &auth, &rng),
            Err(EncryptError::TooLarge(MAX_PLAINTEXT + 1))
        );
        let mut not_a_point = public;
        not_a_point[10] ^= 0xff;
        assert_eq!(
            encrypt(b"x", &not_a_point, &auth, &rng),
            Err(EncryptError::BadPeerKey)
        );
    }
}
