//! The natives under `crypto.subtle` (js/src/prelude/web.js): HMAC, ECDSA (P-256, P-384),
//! Ed25519 and RSA signature verification on `ring`, and the DER forms of keys (PKCS #8, SPKI).
//!
//! The natives are stateless: a `CryptoKey` keeps its material in JS (an HMAC secret; an
//! elliptic-curve private scalar or Ed25519 seed with its public key; a public key as the
//! uncompressed point, the 32 Ed25519 bytes or an RSA PKCS #1 `RSAPublicKey`) and each call
//! passes it in, bytes as Latin-1 strings as elsewhere in the prelude. JWK and raw formats are
//! handled in JS. Errors are thrown with the `name` of the `DOMException` WebCrypto throws
//! (`NotSupportedError`, `DataError`, `OperationError`); the prelude turns them into
//! `DOMException`s.

use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use rquickjs::{Array, ArrayBuffer, Ctx, Function, Object, Value};

use crate::bridge::HostCall;
use crate::host::latin1;

/// DER of the object identifiers in keys.
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];
const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

/// DER tags.
const INTEGER: u8 = 0x02;
const BIT_STRING: u8 = 0x03;
const OCTET_STRING: u8 = 0x04;
const NULL: u8 = 0x05;
const OID: u8 = 0x06;
const SEQUENCE: u8 = 0x30;
const CONTEXT_1: u8 = 0xa1;

/// An error as WebCrypto names it.
#[derive(Debug)]
struct DomError(&'static str, String);

fn data_error(msg: impl Into<String>) -> DomError {
    DomError("DataError", msg.into())
}

fn not_supported(msg: impl Into<String>) -> DomError {
    DomError("NotSupportedError", msg.into())
}

/// Throws `e` as a JS `Error` whose `name` is the `DOMException` name.
fn throw(ctx: &Ctx<'_>, e: DomError) -> rquickjs::Error {
    let thrown = rquickjs::Exception::from_message(ctx.clone(), &e.1)
        .and_then(|ex| ex.as_object().set("name", e.0).map(|()| ex));
    match thrown {
        Ok(ex) => ctx.throw(ex.into_value()),
        Err(err) => err,
    }
}

/// The curves of ECDSA keys.
#[derive(Clone, Copy)]
enum Curve {
    P256,
    P384,
}

impl Curve {
    fn parse(name: &str) -> Result<Curve, DomError> {
        match name {
            "P-256" => Ok(Curve::P256),
            "P-384" => Ok(Curve::P384),
            other => Err(not_supported(format!("unsupported named curve {other:?} (P-256 or P-384)"))),
        }
    }

    fn oid(self) -> &'static [u8] {
        match self {
            Curve::P256 => OID_P256,
            Curve::P384 => OID_P384,
        }
    }

    /// Length of a coordinate or of the private scalar.
    fn len(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
        }
    }

    /// The signing algorithm (P1363 `r || s` signatures, as WebCrypto's), for the curve's own
    /// hash, the pairs `ring` signs with.
    fn signing(self, hash: &str) -> Result<&'static signature::EcdsaSigningAlgorithm, DomError> {
        match (self, hash) {
            (Curve::P256, "SHA-256") => Ok(&signature::ECDSA_P256_SHA256_FIXED_SIGNING),
            (Curve::P384, "SHA-384") => Ok(&signature::ECDSA_P384_SHA384_FIXED_SIGNING),
            _ => Err(not_supported(format!("ECDSA signing with {hash} on this curve is not supported"))),
        }
    }

    /// The verification algorithm, for the pairs `ring` has in P1363 form.
    fn verifying(self, hash: &str) -> Result<&'static signature::EcdsaVerificationAlgorithm, DomError> {
        match (self, hash) {
            (Curve::P256, "SHA-256") => Ok(&signature::ECDSA_P256_SHA256_FIXED),
            (Curve::P384, "SHA-384") => Ok(&signature::ECDSA_P384_SHA384_FIXED),
            _ => Err(not_supported(format!("ECDSA verification with {hash} on this curve is not supported"))),
        }
    }

    /// Checks an uncompressed point's form (`ring` checks it is on the curve when it is used).
    fn check_public(self, public: &[u8]) -> Result<(), DomError> {
        if public.len() == 1 + 2 * self.len() && public[0] == 4 {
            Ok(())
        } else {
            Err(data_error("an EC public key must be an uncompressed point (compressed points are not supported)"))
        }
    }
}

fn hmac_alg(hash: &str) -> Result<ring::hmac::Algorithm, DomError> {
    match hash {
        "SHA-1" => Ok(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY),
        "SHA-256" => Ok(ring::hmac::HMAC_SHA256),
        "SHA-384" => Ok(ring::hmac::HMAC_SHA384),
        "SHA-512" => Ok(ring::hmac::HMAC_SHA512),
        other => Err(not_supported(format!("unsupported hash {other:?}"))),
    }
}

fn rsa_alg(alg: &str, hash: &str) -> Result<&'static signature::RsaParameters, DomError> {
    match (alg, hash) {
        ("RSASSA-PKCS1-v1_5", "SHA-256") => Ok(&signature::RSA_PKCS1_2048_8192_SHA256),
        ("RSASSA-PKCS1-v1_5", "SHA-384") => Ok(&signature::RSA_PKCS1_2048_8192_SHA384),
        ("RSASSA-PKCS1-v1_5", "SHA-512") => Ok(&signature::RSA_PKCS1_2048_8192_SHA512),
        ("RSA-PSS", "SHA-256") => Ok(&signature::RSA_PSS_2048_8192_SHA256),
        ("RSA-PSS", "SHA-384") => Ok(&signature::RSA_PSS_2048_8192_SHA384),
        ("RSA-PSS", "SHA-512") => Ok(&signature::RSA_PSS_2048_8192_SHA512),
        _ => Err(not_supported(format!("{alg} with {hash} is not supported"))),
    }
}

/// Signs `data`: `key` is the HMAC secret or the private scalar / seed, `public` the public key.
fn sign(alg: &str, curve: &str, hash: &str, key: &[u8], public: &[u8], data: &[u8]) -> Result<Vec<u8>, DomError> {
    let op_error = |e: ring::error::KeyRejected| DomError("OperationError", format!("invalid key: {e}"));
    match alg {
        "HMAC" => Ok(ring::hmac::sign(&ring::hmac::Key::new(hmac_alg(hash)?, key), data).as_ref().to_vec()),
        "ECDSA" => {
            let rng = SystemRandom::new();
            let pair =
                EcdsaKeyPair::from_private_key_and_public_key(Curve::parse(curve)?.signing(hash)?, key, public, &rng)
                    .map_err(op_error)?;
            let sig = pair.sign(&rng, data).map_err(|_| DomError("OperationError", "signing failed".into()))?;
            Ok(sig.as_ref().to_vec())
        }
        "Ed25519" => {
            let pair = Ed25519KeyPair::from_seed_and_public_key(key, public).map_err(op_error)?;
            Ok(pair.sign(data).as_ref().to_vec())
        }
        other => Err(not_supported(format!("{other} cannot sign here (HMAC, ECDSA and Ed25519 can)"))),
    }
}

/// Verifies `sig` over `data`: `key` is the HMAC secret or the public key.
fn verify(alg: &str, curve: &str, hash: &str, key: &[u8], sig: &[u8], data: &[u8]) -> Result<bool, DomError> {
    let public = |alg: &'static dyn signature::VerificationAlgorithm| {
        signature::UnparsedPublicKey::new(alg, key).verify(data, sig).is_ok()
    };
    match alg {
        "HMAC" => Ok(ring::hmac::verify(&ring::hmac::Key::new(hmac_alg(hash)?, key), data, sig).is_ok()),
        "ECDSA" => Ok(public(Curve::parse(curve)?.verifying(hash)?)),
        "Ed25519" => Ok(public(&signature::ED25519)),
        "RSASSA-PKCS1-v1_5" | "RSA-PSS" => Ok(public(rsa_alg(alg, hash)?)),
        other => Err(not_supported(format!("unsupported algorithm {other:?}"))),
    }
}

/// One DER element: its tag, its contents and what follows it.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        (rest[..n].iter().fold(0usize, |acc, &b| acc << 8 | b as usize), &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The contents of the element at the start of `input`, which must have `tag`, and the rest.
fn expect(input: &[u8], tag: u8) -> Result<(&[u8], &[u8]), DomError> {
    match tlv(input) {
        Some((t, contents, rest)) if t == tag => Ok((contents, rest)),
        _ => Err(data_error("malformed key data (DER)")),
    }
}

/// A DER element.
fn der(tag: u8, contents: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = contents.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len.to_be_bytes().into_iter().skip_while(|&b| b == 0).collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(contents);
    out
}

/// The DER `AlgorithmIdentifier` of a key.
fn algorithm_id(alg: &str, curve: &str) -> Result<Vec<u8>, DomError> {
    Ok(match alg {
        "ECDSA" => der(SEQUENCE, &[der(OID, OID_EC_PUBLIC_KEY), der(OID, Curve::parse(curve)?.oid())].concat()),
        "Ed25519" => der(SEQUENCE, &der(OID, OID_ED25519)),
        "RSASSA-PKCS1-v1_5" | "RSA-PSS" => der(SEQUENCE, &[der(OID, OID_RSA), der(NULL, &[])].concat()),
        other => return Err(not_supported(format!("{other} keys have no SPKI or PKCS #8 form"))),
    })
}

/// Checks the `AlgorithmIdentifier` at the start of `input` and returns what follows it.
fn check_algorithm<'a>(input: &'a [u8], alg: &str, curve: &str) -> Result<&'a [u8], DomError> {
    let (id, rest) = expect(input, SEQUENCE)?;
    let (oid, params) = expect(id, OID)?;
    let (want, want_params): (&[u8], Option<&[u8]>) = match alg {
        "ECDSA" => (OID_EC_PUBLIC_KEY, Some(Curve::parse(curve)?.oid())),
        "Ed25519" => (OID_ED25519, None),
        "RSASSA-PKCS1-v1_5" | "RSA-PSS" => (OID_RSA, None),
        other => return Err(not_supported(format!("{other} keys have no SPKI or PKCS #8 form"))),
    };
    if oid != want {
        return Err(data_error(format!("the key is not an {alg} key")));
    }
    if let Some(want_params) = want_params {
        let (curve_oid, _) = expect(params, OID)?;
        if curve_oid != want_params {
            return Err(data_error(format!("the key is not on {curve}")));
        }
    }
    Ok(rest)
}

/// The public key in a `SubjectPublicKeyInfo`.
fn from_spki(alg: &str, curve: &str, spki: &[u8]) -> Result<Vec<u8>, DomError> {
    let (info, _) = expect(spki, SEQUENCE)?;
    let rest = check_algorithm(info, alg, curve)?;
    let (bits, _) = expect(rest, BIT_STRING)?;
    let Some((0, key)) = bits.split_first() else {
        return Err(data_error("malformed public key bits"));
    };
    check_public(alg, curve, key)?;
    Ok(key.to_vec())
}

/// Checks a public key's form.
fn check_public(alg: &str, curve: &str, key: &[u8]) -> Result<(), DomError> {
    match alg {
        "ECDSA" => Curve::parse(curve)?.check_public(key),
        "Ed25519" if key.len() == 32 => Ok(()),
        "Ed25519" => Err(data_error("an Ed25519 public key is 32 bytes")),
        _ => Ok(()),
    }
}

/// The private scalar (or seed) and public key of a `PrivateKeyInfo`, checked by `ring`.
fn from_pkcs8(alg: &str, curve: &str, pkcs8: &[u8]) -> Result<(Vec<u8>, Vec<u8>), DomError> {
    let (info, _) = expect(pkcs8, SEQUENCE)?;
    let (_version, rest) = expect(info, INTEGER)?;
    let rest = check_algorithm(rest, alg, curve)?;
    let (private, _) = expect(rest, OCTET_STRING)?;
    let rejected = |e: ring::error::KeyRejected| data_error(format!("invalid private key: {e}"));
    match alg {
        "ECDSA" => {
            let c = Curve::parse(curve)?;
            let alg = match c {
                Curve::P256 => &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                Curve::P384 => &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
            };
            let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8, &SystemRandom::new()).map_err(rejected)?;
            // ECPrivateKey: version, then the scalar.
            let (ec, _) = expect(private, SEQUENCE)?;
            let (_version, rest) = expect(ec, INTEGER)?;
            let (scalar, _) = expect(rest, OCTET_STRING)?;
            Ok((scalar.to_vec(), pair.public_key().as_ref().to_vec()))
        }
        "Ed25519" => {
            let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8).map_err(rejected)?;
            let (seed, _) = expect(private, OCTET_STRING)?;
            Ok((seed.to_vec(), pair.public_key().as_ref().to_vec()))
        }
        other => Err(not_supported(format!("{other} private keys cannot be imported"))),
    }
}

/// The `PrivateKeyInfo` of a private scalar (or seed) and public key.
fn to_pkcs8(alg: &str, curve: &str, private: &[u8], public: &[u8]) -> Result<Vec<u8>, DomError> {
    let key = match alg {
        "ECDSA" => {
            let bits = [&[0u8][..], public].concat();
            der(
                SEQUENCE,
                &[der(INTEGER, &[1]), der(OCTET_STRING, private), der(CONTEXT_1, &der(BIT_STRING, &bits))].concat(),
            )
        }
        "Ed25519" => der(OCTET_STRING, private),
        other => return Err(not_supported(format!("{other} private keys cannot be exported"))),
    };
    Ok(der(SEQUENCE, &[der(INTEGER, &[0]), algorithm_id(alg, curve)?, der(OCTET_STRING, &key)].concat()))
}

/// The `SubjectPublicKeyInfo` of a public key.
fn to_spki(alg: &str, curve: &str, public: &[u8]) -> Result<Vec<u8>, DomError> {
    let bits = [&[0u8][..], public].concat();
    Ok(der(SEQUENCE, &[algorithm_id(alg, curve)?, der(BIT_STRING, &bits)].concat()))
}

/// A DER `INTEGER` of an unsigned big-endian number.
fn der_uint(n: &[u8]) -> Vec<u8> {
    let n = match n.iter().position(|&b| b != 0) {
        Some(i) => &n[i..],
        None => &[0u8][..],
    };
    if n[0] & 0x80 != 0 {
        der(INTEGER, &[&[0u8][..], n].concat())
    } else {
        der(INTEGER, n)
    }
}

/// Splits a PKCS #1 `RSAPublicKey` into modulus and exponent (unsigned, big-endian).
fn rsa_parts(key: &[u8]) -> Result<(Vec<u8>, Vec<u8>), DomError> {
    let (seq, _) = expect(key, SEQUENCE)?;
    let (n, rest) = expect(seq, INTEGER)?;
    let (e, _) = expect(rest, INTEGER)?;
    let strip = |x: &[u8]| x.iter().skip_while(|&&b| b == 0).copied().collect::<Vec<u8>>();
    Ok((strip(n), strip(e)))
}

/// A new key pair: the private scalar (or seed) and the public key.
fn generate(alg: &str, curve: &str) -> Result<(Vec<u8>, Vec<u8>), DomError> {
    let rng = SystemRandom::new();
    let failed = |_| DomError("OperationError", "generating the key failed".into());
    let pkcs8 = match alg {
        "ECDSA" => {
            let signing = match Curve::parse(curve)? {
                Curve::P256 => &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                Curve::P384 => &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
            };
            EcdsaKeyPair::generate_pkcs8(signing, &rng).map_err(failed)?
        }
        "Ed25519" => Ed25519KeyPair::generate_pkcs8(&rng).map_err(failed)?,
        other => return Err(not_supported(format!("{other} key pairs cannot be generated"))),
    };
    from_pkcs8(alg, curve, pkcs8.as_ref())
}

/// Checks that a private scalar (or seed) and public key belong together.
fn check_pair(alg: &str, curve: &str, private: &[u8], public: &[u8]) -> Result<(), DomError> {
    let rejected = |e: ring::error::KeyRejected| data_error(format!("invalid key: {e}"));
    match alg {
        "ECDSA" => {
            let c = Curve::parse(curve)?;
            let signing = match c {
                Curve::P256 => &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                Curve::P384 => &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
            };
            EcdsaKeyPair::from_private_key_and_public_key(signing, private, public, &SystemRandom::new())
                .map(drop)
                .map_err(rejected)
        }
        "Ed25519" => Ed25519KeyPair::from_seed_and_public_key(private, public).map(drop).map_err(rejected),
        other => Err(not_supported(format!("{other} private keys are not supported"))),
    }
}

/// The key operations of `cryptoKey(op, alg, curve, a, b)`, all on Latin-1 byte strings.
enum KeyOut {
    None,
    One(Vec<u8>),
    Two(Vec<u8>, Vec<u8>),
}

fn key_op(op: &str, alg: &str, curve: &str, a: &[u8], b: &[u8]) -> Result<KeyOut, DomError> {
    Ok(match op {
        "generate" => {
            let (private, public) = generate(alg, curve)?;
            KeyOut::Two(private, public)
        }
        "checkPair" => {
            check_pair(alg, curve, a, b)?;
            KeyOut::None
        }
        "checkPublic" => {
            check_public(alg, curve, a)?;
            KeyOut::None
        }
        "fromPkcs8" => {
            let (private, public) = from_pkcs8(alg, curve, a)?;
            KeyOut::Two(private, public)
        }
        "fromSpki" => KeyOut::One(from_spki(alg, curve, a)?),
        "toPkcs8" => KeyOut::One(to_pkcs8(alg, curve, a, b)?),
        "toSpki" => KeyOut::One(to_spki(alg, curve, a)?),
        "rsaFromParts" => KeyOut::One(der(SEQUENCE, &[der_uint(a), der_uint(b)].concat())),
        "rsaParts" => {
            let (n, e) = rsa_parts(a)?;
            KeyOut::Two(n, e)
        }
        other => return Err(not_supported(format!("unknown key operation {other:?}"))),
    })
}

/// Installs the natives `cryptoSign`, `cryptoVerify` and `cryptoKey` on `natives`.
pub(crate) fn install<'js>(ctx: &Ctx<'js>, natives: &Object<'js>) -> rquickjs::Result<()> {
    natives.set(
        HostCall::CryptoSign.name(),
        Function::new(
            ctx.clone(),
            |ctx: Ctx<'js>, alg: String, curve: String, hash: String, key: String, public: String, data: String| {
                let sig = sign(&alg, &curve, &hash, &latin1(&key), &latin1(&public), &latin1(&data))
                    .map_err(|e| throw(&ctx, e))?;
                ArrayBuffer::new(ctx, sig)
            },
        )?,
    )?;
    natives.set(
        HostCall::CryptoVerify.name(),
        Function::new(
            ctx.clone(),
            |ctx: Ctx<'js>, alg: String, curve: String, hash: String, key: String, sig: String, data: String| {
                verify(&alg, &curve, &hash, &latin1(&key), &latin1(&sig), &latin1(&data)).map_err(|e| throw(&ctx, e))
            },
        )?,
    )?;
    natives.set(
        HostCall::CryptoKey.name(),
        Function::new(ctx.clone(), |ctx: Ctx<'js>, op: String, alg: String, curve: String, a: String, b: String| {
            let out = key_op(&op, &alg, &curve, &latin1(&a), &latin1(&b)).map_err(|e| throw(&ctx, e))?;
            Ok::<Value<'js>, rquickjs::Error>(match out {
                KeyOut::None => Value::new_null(ctx.clone()),
                KeyOut::One(x) => ArrayBuffer::new(ctx.clone(), x)?.into_value(),
                KeyOut::Two(x, y) => {
                    let arr = Array::new(ctx.clone())?;
                    arr.set(0, ArrayBuffer::new(ctx.clone(), x)?)?;
                    arr.set(1, ArrayBuffer::new(ctx.clone(), y)?)?;
                    arr.into_value()
                }
            })
        })?,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_pkcs8_and_spki() {
        for (alg, curve) in [("ECDSA", "P-256"), ("ECDSA", "P-384"), ("Ed25519", "")] {
            let (private, public) = generate(alg, curve).expect("a key pair");
            let pkcs8 = to_pkcs8(alg, curve, &private, &public).expect("pkcs8");
            let (p2, q2) = from_pkcs8(alg, curve, &pkcs8).expect("parsed back");
            assert_eq!((p2, q2), (private.clone(), public.clone()));
            let spki = to_spki(alg, curve, &public).expect("spki");
            assert_eq!(from_spki(alg, curve, &spki).expect("parsed back"), public);
            let hash = if curve == "P-384" { "SHA-384" } else { "SHA-256" };
            let sig = sign(alg, curve, hash, &private, &public, b"data").expect("signed");
            assert!(verify(alg, curve, hash, &public, &sig, b"data").expect("verified"));
            assert!(!verify(alg, curve, hash, &public, &sig, b"other").expect("checked"));
        }
    }

    #[test]
    fn rsa_public_keys_split_and_join() {
        let n = [0x80u8, 1, 2, 3];
        let key = der(SEQUENCE, &[der_uint(&n), der_uint(&[1, 0, 1])].concat());
        let (n2, e2) = rsa_parts(&key).expect("parts");
        assert_eq!((n2.as_slice(), e2.as_slice()), (&n[..], &[1u8, 0, 1][..]));
    }
}
