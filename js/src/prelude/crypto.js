// partyline:prelude/crypto, a part of the prelude loaded on first use of `crypto.subtle` or
// `CryptoKey` (crypto.js). js/src/modules.rs wraps it in
// `export default function (N, asBytes, toLatin1) { ... return { CryptoKey, subtle }; }`: it sees
// the natives and the bytes helpers of the prelude (prelude/web.js keeps `crypto.getRandomValues`
// and `crypto.randomUUID`).

// `crypto.subtle` over the natives of js/src/crypto.rs: digests, HMAC, ECDSA (P-256, P-384),
// Ed25519 (sign and verify), RSASSA-PKCS1-v1_5 and RSA-PSS (verify only); keys as raw, jwk, spki
// and pkcs8. A key's material stays in `keyMaterial` (bytes as Latin-1 strings), out of reach of
// the party's code.
const HASHES = { "SHA-1": "sha1", "SHA-256": "sha256", "SHA-384": "sha384", "SHA-512": "sha512" };
const ALGORITHMS = { HMAC: "HMAC", ECDSA: "ECDSA", ED25519: "Ed25519", "NODE-ED25519": "Ed25519", "RSASSA-PKCS1-V1_5": "RSASSA-PKCS1-v1_5", "RSA-PSS": "RSA-PSS" };
const HMAC_BLOCK_BITS = { "SHA-1": 512, "SHA-256": 512, "SHA-384": 1024, "SHA-512": 1024 };
// Errors are the global DOMException (QuickJS has its own, which the prelude's class above does
// not replace), so that `e instanceof DOMException` holds in the party's code.
const CryptoError = globalThis.DOMException;
const keyMaterial = new WeakMap();
const KEY_TOKEN = Symbol("CryptoKey");
class CryptoKey {
  constructor(token, type, extractable, algorithm, usages, material) {
    if (token !== KEY_TOKEN) throw new TypeError("Illegal constructor");
    this.type = type;
    this.extractable = extractable;
    this.algorithm = algorithm;
    this.usages = usages;
    keyMaterial.set(this, material);
  }
}
globalThis.CryptoKey = CryptoKey;
function subtleCall(fn) {
  try {
    return fn();
  } catch (e) {
    if (e instanceof CryptoError || e instanceof TypeError) throw e;
    throw new CryptoError(e.message, e.name && e.name !== "Error" ? e.name : "OperationError");
  }
}
function hashName(h) {
  const name = String(typeof h === "string" ? h : h && h.name).toUpperCase();
  if (!HASHES[name]) throw new CryptoError(`Unrecognized hash: ${name}`, "NotSupportedError");
  return name;
}
function normalizeAlgorithm(alg) {
  const a = typeof alg === "string" ? { name: alg } : { ...alg };
  const name = ALGORITHMS[String(a.name).toUpperCase()];
  if (!name) throw new CryptoError(`Unrecognized algorithm name: ${a.name}`, "NotSupportedError");
  a.name = name;
  if (a.hash !== undefined) a.hash = hashName(a.hash);
  return a;
}
function bytesOf(data, what) {
  const u8 = asBytes(data);
  if (!u8) throw new TypeError(`${what} must be an ArrayBuffer or a view of one`);
  return u8;
}
function b64url(s) { return btoa(s).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, ""); }
function unb64url(s, what) {
  if (typeof s !== "string") throw new CryptoError(`The JWK has no ${what}`, "DataError");
  try { return atob(s.replace(/-/g, "+").replace(/_/g, "/")); } catch { throw new CryptoError(`The JWK's ${what} is not base64url`, "DataError"); }
}
const latin1Buffer = (s) => Uint8Array.from(s, (c) => c.charCodeAt(0)).buffer;
const CURVE_BYTES = { "P-256": 32, "P-384": 48 };
function checkUsages(usages, allowed, type) {
  usages = [...usages];
  for (const u of usages) if (!allowed.includes(u)) throw new CryptoError(`Cannot create a ${type} key with usage ${u}`, "SyntaxError");
  if (usages.length === 0 && type !== "public") throw new CryptoError("Usages cannot be empty when creating a key.", "SyntaxError");
  return usages;
}
function makeKey(type, alg, extractable, usages, material) {
  let algorithm;
  if (alg.name === "HMAC") algorithm = { name: "HMAC", hash: { name: alg.hash }, length: material.secret.length * 8 };
  else if (alg.name === "ECDSA") algorithm = { name: "ECDSA", namedCurve: alg.namedCurve };
  else if (alg.name === "Ed25519") algorithm = { name: "Ed25519" };
  else {
    const [n, e] = N.cryptoKey("rsaParts", alg.name, "", material.pub, "");
    algorithm = { name: alg.name, hash: { name: alg.hash }, modulusLength: new Uint8Array(n).length * 8, publicExponent: new Uint8Array(e) };
  }
  const allowed = type === "secret" ? ["sign", "verify"] : type === "private" ? ["sign"] : ["verify"];
  return new CryptoKey(KEY_TOKEN, type, !!extractable, algorithm, checkUsages(usages, allowed, type), material);
}
function importKey(format, data, alg, extractable, usages) {
  alg = normalizeAlgorithm(alg);
  const curve = alg.name === "ECDSA" ? String(alg.namedCurve) : "";
  if (alg.name === "ECDSA" && !CURVE_BYTES[curve]) throw new CryptoError(`Unrecognized namedCurve: ${curve}`, "NotSupportedError");
  if ((alg.name === "HMAC" || alg.name.startsWith("RSA")) && !alg.hash) throw new TypeError(`${alg.name} needs a hash`);
  const key = (type, material) => makeKey(type, alg, extractable, usages, material);
  if (format === "raw") {
    const bytes = toLatin1(bytesOf(data, "keyData"));
    if (alg.name === "HMAC") {
      if (!bytes.length) throw new CryptoError("HMAC key data must not be empty", "DataError");
      return key("secret", { secret: bytes });
    }
    if (alg.name.startsWith("RSA")) throw new CryptoError(`${alg.name} keys cannot be imported as raw`, "NotSupportedError");
    N.cryptoKey("checkPublic", alg.name, curve, bytes, "");
    return key("public", { pub: bytes });
  }
  if (format === "spki") {
    if (alg.name === "HMAC") throw new CryptoError("HMAC keys cannot be imported as spki", "NotSupportedError");
    const pub = N.cryptoKey("fromSpki", alg.name, curve, toLatin1(bytesOf(data, "keyData")), "");
    return key("public", { pub: toLatin1(new Uint8Array(pub)) });
  }
  if (format === "pkcs8") {
    if (alg.name !== "ECDSA" && alg.name !== "Ed25519") throw new CryptoError(`${alg.name} keys cannot be imported as pkcs8`, "NotSupportedError");
    const [d, pub] = N.cryptoKey("fromPkcs8", alg.name, curve, toLatin1(bytesOf(data, "keyData")), "");
    return key("private", { priv: toLatin1(new Uint8Array(d)), pub: toLatin1(new Uint8Array(pub)) });
  }
  if (format !== "jwk") throw new CryptoError(`Unsupported key format: ${format}`, "NotSupportedError");
  const jwk = data;
  if (!jwk || typeof jwk !== "object") throw new TypeError("A jwk key must be an object");
  const kty = { HMAC: "oct", ECDSA: "EC", Ed25519: "OKP" }[alg.name] || "RSA";
  if (jwk.kty !== kty) throw new CryptoError(`The JWK's kty must be ${kty}`, "DataError");
  if (jwk.ext === false && extractable) throw new CryptoError("The JWK is not extractable", "DataError");
  if (alg.name === "HMAC") return key("secret", { secret: unb64url(jwk.k, "k") });
  if (alg.name.startsWith("RSA")) {
    if (jwk.d !== undefined) throw new CryptoError("RSA private keys are not supported", "NotSupportedError");
    const der = N.cryptoKey("rsaFromParts", alg.name, "", unb64url(jwk.n, "n"), unb64url(jwk.e, "e"));
    return key("public", { pub: toLatin1(new Uint8Array(der)) });
  }
  const wantCrv = alg.name === "ECDSA" ? curve : "Ed25519";
  if (jwk.crv !== wantCrv) throw new CryptoError(`The JWK's crv must be ${wantCrv}`, "DataError");
  const pub = alg.name === "ECDSA" ? "\x04" + unb64url(jwk.x, "x") + unb64url(jwk.y, "y") : unb64url(jwk.x, "x");
  N.cryptoKey("checkPublic", alg.name, curve, pub, "");
  if (jwk.d === undefined) return key("public", { pub });
  const priv = unb64url(jwk.d, "d");
  N.cryptoKey("checkPair", alg.name, curve, priv, pub);
  return key("private", { priv, pub });
}
function exportKey(format, key) {
  if (!(key instanceof CryptoKey)) throw new TypeError("exportKey takes a CryptoKey");
  if (!key.extractable) throw new CryptoError("The key is not extractable", "InvalidAccessError");
  const m = keyMaterial.get(key);
  const alg = key.algorithm;
  const curve = alg.namedCurve || "";
  if (format === "raw") {
    if (key.type === "private" || alg.name.startsWith("RSA")) throw new CryptoError(`${alg.name} ${key.type} keys cannot be exported as raw`, "InvalidAccessError");
    return latin1Buffer(key.type === "secret" ? m.secret : m.pub);
  }
  if (format === "spki") {
    if (key.type !== "public") throw new CryptoError("Only public keys export as spki", "InvalidAccessError");
    return N.cryptoKey("toSpki", alg.name, curve, m.pub, "");
  }
  if (format === "pkcs8") {
    if (key.type !== "private") throw new CryptoError("Only private keys export as pkcs8", "InvalidAccessError");
    return N.cryptoKey("toPkcs8", alg.name, curve, m.priv, m.pub);
  }
  if (format !== "jwk") throw new CryptoError(`Unsupported key format: ${format}`, "NotSupportedError");
  const jwk = { key_ops: [...key.usages], ext: true };
  if (key.type === "secret") {
    Object.assign(jwk, { kty: "oct", k: b64url(m.secret), alg: "HS" + alg.hash.name.slice(4) });
  } else if (alg.name === "ECDSA") {
    const n = CURVE_BYTES[curve];
    Object.assign(jwk, { kty: "EC", crv: curve, x: b64url(m.pub.slice(1, 1 + n)), y: b64url(m.pub.slice(1 + n)) });
    if (m.priv) jwk.d = b64url(m.priv);
  } else if (alg.name === "Ed25519") {
    Object.assign(jwk, { kty: "OKP", crv: "Ed25519", x: b64url(m.pub) });
    if (m.priv) jwk.d = b64url(m.priv);
  } else {
    const [n, e] = N.cryptoKey("rsaParts", alg.name, "", m.pub, "");
    Object.assign(jwk, { kty: "RSA", n: b64url(toLatin1(new Uint8Array(n))), e: b64url(toLatin1(new Uint8Array(e))) });
  }
  return jwk;
}
function generateKey(alg, extractable, usages) {
  alg = normalizeAlgorithm(alg);
  usages = [...usages];
  if (alg.name === "HMAC") {
    if (!alg.hash) throw new TypeError("HMAC needs a hash");
    const bits = alg.length === undefined ? HMAC_BLOCK_BITS[alg.hash] : Number(alg.length);
    if (!(bits > 0) || bits % 8) throw new CryptoError("HMAC key lengths must be a positive multiple of 8", "OperationError");
    return makeKey("secret", alg, extractable, usages, { secret: toLatin1(new Uint8Array(N.randomBytes(bits / 8))) });
  }
  if (alg.name !== "ECDSA" && alg.name !== "Ed25519") throw new CryptoError(`${alg.name} keys cannot be generated`, "NotSupportedError");
  const curve = alg.name === "ECDSA" ? String(alg.namedCurve) : "";
  if (alg.name === "ECDSA" && !CURVE_BYTES[curve]) throw new CryptoError(`Unrecognized namedCurve: ${curve}`, "NotSupportedError");
  for (const u of usages) if (u !== "sign" && u !== "verify") throw new CryptoError(`Cannot create a key with usage ${u}`, "SyntaxError");
  const [d, pub] = N.cryptoKey("generate", alg.name, curve, "", "");
  const material = { priv: toLatin1(new Uint8Array(d)), pub: toLatin1(new Uint8Array(pub)) };
  return {
    publicKey: makeKey("public", alg, true, usages.filter((u) => u === "verify"), { pub: material.pub }),
    privateKey: makeKey("private", alg, extractable, usages.filter((u) => u === "sign"), material),
  };
}
// The algorithm's parameters for a key: the hash and curve the natives take.
function keyParams(alg, key, usage) {
  alg = normalizeAlgorithm(alg);
  if (!(key instanceof CryptoKey)) throw new TypeError(`${usage} takes a CryptoKey`);
  if (alg.name !== key.algorithm.name) throw new CryptoError(`The key is for ${key.algorithm.name}, not ${alg.name}`, "InvalidAccessError");
  if (!key.usages.includes(usage)) throw new CryptoError(`The key cannot be used to ${usage}`, "InvalidAccessError");
  const hash = alg.name === "ECDSA" ? alg.hash : key.algorithm.hash ? key.algorithm.hash.name : "";
  if (alg.name === "ECDSA" && !hash) throw new TypeError("ECDSA needs a hash");
  return { name: alg.name, curve: key.algorithm.namedCurve || "", hash };
}
const subtle = {
  async digest(alg, data) {
    const name = (typeof alg === "string" ? alg : alg.name).toUpperCase();
    if (!HASHES[name]) throw new CryptoError(`Unrecognized algorithm name: ${name}`, "NotSupportedError");
    const u8 = asBytes(data);
    if (!u8) throw new TypeError("digest takes an ArrayBuffer or a view of one");
    return N.digest(HASHES[name], toLatin1(u8));
  },
  async importKey(format, keyData, alg, extractable, usages) {
    return subtleCall(() => importKey(format, keyData, alg, extractable, usages));
  },
  async exportKey(format, key) {
    return subtleCall(() => exportKey(format, key));
  },
  async generateKey(alg, extractable, usages) {
    return subtleCall(() => generateKey(alg, extractable, usages));
  },
  async sign(alg, key, data) {
    return subtleCall(() => {
      const p = keyParams(alg, key, "sign");
      const m = keyMaterial.get(key);
      return N.cryptoSign(p.name, p.curve, p.hash, m.secret ?? m.priv, m.pub ?? "", toLatin1(bytesOf(data, "data")));
    });
  },
  async verify(alg, key, signature, data) {
    return subtleCall(() => {
      const p = keyParams(alg, key, "verify");
      const m = keyMaterial.get(key);
      return N.cryptoVerify(p.name, p.curve, p.hash, m.secret ?? m.pub, toLatin1(bytesOf(signature, "signature")), toLatin1(bytesOf(data, "data")));
    });
  },
};
