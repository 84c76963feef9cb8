/**
 * Decentralized NATS authentication for tests, made offline: an operator, a system account, one account with
 * JetStream, and users of it, as JWTs signed with their issuers' nkeys, and `.creds` files as `nsc` writes them.
 *
 * Why not `nsc`: it is not reachable through this machine's Go module proxy (403), so the JWTs are built here.
 * The keys come from nats.js's own nkeys implementation (`nkeys` of @nats-io/transport-node: Ed25519 over
 * tweetnacl), on purpose not from the kit's (net/nats/nkeys.ts, WebCrypto), so that a test in which the
 * kit signs the server's nonce with a seed made here checks two implementations against each other, and
 * nats-server checks both: it verifies every JWT's signature up the chain (user ← account ← operator) and the
 * nonce's signature against the user's public key. The JWT layout is nats-io/jwt v2's: header
 * `{"typ":"JWT","alg":"ed25519-nkey"}`, claims with `jti`, `iat`, `iss`, `sub`, `name` and the NATS part under
 * `nats` (`type`, `version: 2`), each part base64url without padding, the signature over `header.claims`.
 */
import { nkeys } from "@nats-io/transport-node";

const encoder = new TextEncoder();

function base64Url(bytes: Uint8Array | string): string {
  const data = typeof bytes === "string" ? encoder.encode(bytes) : bytes;
  let binary = "";
  for (const byte of data) binary += String.fromCharCode(byte);
  return btoa(binary).replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");
}

type KeyPair = ReturnType<typeof nkeys.createUser>;

/** A JWT of `claims` (jti and iat filled in), signed by `issuer`. */
function signJwt(claims: Record<string, unknown>, issuer: KeyPair): string {
  const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
  const jti = Array.from(crypto.getRandomValues(new Uint8Array(52)), (b) => alphabet[b & 31]).join("");
  const body = { jti, iat: Math.floor(Date.now() / 1000) - 5, iss: issuer.getPublicKey(), ...claims };
  const signed = `${base64Url(JSON.stringify({ typ: "JWT", alg: "ed25519-nkey" }))}.${
    base64Url(JSON.stringify(body))
  }`;
  return `${signed}.${base64Url(issuer.sign(encoder.encode(signed)))}`;
}

/** The text of a `.creds` file, as `nsc generate creds` writes it. */
export function credsFileText(jwt: string, seed: string): string {
  return `-----BEGIN NATS USER JWT-----
${jwt}
------END NATS USER JWT------

************************* IMPORTANT *************************
NKEY Seed printed below can be used to sign and prove identity.
NKEYs are sensitive and should be treated as secrets.

-----BEGIN USER NKEY SEED-----
${seed}
------END USER NKEY SEED------

*************************************************************
`;
}

/** A user of the test account: its name, and subject permissions (everything when not given). */
export interface NatsJwtUser {
  name: string;
  pub?: { allow?: string[]; deny?: string[] };
  sub?: { allow?: string[]; deny?: string[] };
  /** The JWT expires this many seconds from now (none by default). */
  expiresInS?: number;
}

export interface NatsOperatorSetup {
  /** nats-server configuration: the operator, the system account, a memory resolver holding both accounts. */
  readonly serverConfig: string;
  /** The account's public key (`A...`). */
  readonly accountPublicKey: string;
  /** A user's `.creds` text (its JWT and seed). */
  creds(user: string): string;
  /** Writes a user's `.creds` file into `dir` (mode 600) and returns its path. */
  writeCreds(dir: string, user: string): Promise<string>;
  /** A new `.creds` text for `user` (a fresh JWT, e.g. a renewal), signed by the same account. */
  issue(user: NatsJwtUser): string;
}

/** Makes an operator, a system account, a JetStream account and its users (see the module comment). */
export function natsOperatorSetup(users: NatsJwtUser[]): NatsOperatorSetup {
  const operator = nkeys.createOperator();
  const system = nkeys.createAccount();
  const account = nkeys.createAccount();
  const unlimited = {
    subs: -1,
    data: -1,
    payload: -1,
    imports: -1,
    exports: -1,
    wildcards: true,
    conn: -1,
    leaf: -1,
  };
  const operatorJwt = signJwt({
    name: "tailwatch-test-operator",
    sub: operator.getPublicKey(),
    nats: { system_account: system.getPublicKey(), type: "operator", version: 2 },
  }, operator);
  const systemJwt = signJwt({
    name: "SYS",
    sub: system.getPublicKey(),
    nats: { limits: unlimited, default_permissions: { pub: {}, sub: {} }, type: "account", version: 2 },
  }, operator);
  const accountJwt = signJwt({
    name: "TAILWATCH",
    sub: account.getPublicKey(),
    nats: {
      limits: { ...unlimited, mem_storage: -1, disk_storage: -1, streams: -1, consumer: -1 },
      default_permissions: { pub: {}, sub: {} },
      type: "account",
      version: 2,
    },
  }, operator);
  const decoder = new TextDecoder();
  const issue = (user: NatsJwtUser): string => {
    const keys = nkeys.createUser();
    const jwt = signJwt({
      name: user.name,
      sub: keys.getPublicKey(),
      ...(user.expiresInS !== undefined ? { exp: Math.floor(Date.now() / 1000) + user.expiresInS } : {}),
      nats: {
        pub: user.pub ?? {},
        sub: user.sub ?? {},
        subs: -1,
        data: -1,
        payload: -1,
        type: "user",
        version: 2,
      },
    }, account);
    return credsFileText(jwt, decoder.decode(keys.getSeed()));
  };
  const creds = new Map(users.map((user) => [user.name, issue(user)]));
  const credsOf = (name: string) => {
    const text = creds.get(name);
    if (text === undefined) throw new Error(`no user ${name}`);
    return text;
  };
  return {
    serverConfig: [
      `operator: "${operatorJwt}"`,
      `system_account: ${system.getPublicKey()}`,
      `resolver: MEMORY`,
      `resolver_preload: {`,
      `  ${system.getPublicKey()}: "${systemJwt}"`,
      `  ${account.getPublicKey()}: "${accountJwt}"`,
      `}`,
      "",
    ].join("\n"),
    accountPublicKey: account.getPublicKey(),
    creds: credsOf,
    async writeCreds(dir, name) {
      const path = `${dir}/${name}.creds`;
      await Deno.writeTextFile(path, credsOf(name), { mode: 0o600 });
      return path;
    },
    issue,
  };
}
