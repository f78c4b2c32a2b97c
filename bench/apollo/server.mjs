// The Apollo Server peer: what a frontend team would pick instead of Agentry.
//
// @apollo/server (current major) with its standalone Node HTTP server, node-postgres and
// jsonwebtoken, answering the benchmark's W1 (`{ __typename }`) and W2 (`me { id email }`)
// against the same database and schema as Agentry. Access tokens are Agentry's own (HS256, same
// secret, same `iss`/`aud`/`typ` checks), and `me` runs the same single authentication query
// Agentry runs: the user of a live session, joined in one statement. Node is single-threaded, so
// the process forks one worker per core (node:cluster shares the listening socket), as the
// Strawberry peer runs one uvicorn worker per core.
//
// Run (bench/run does this, with NODE_ENV=production as a deployment would):
//   DATABASE_URL=… AGENTRY_JWT_SECRET=… PORT=18083 WORKERS=2 node server.mjs
import cluster from "node:cluster";
import { createSecretKey } from "node:crypto";
import process from "node:process";

import { ApolloServer } from "@apollo/server";
import { startStandaloneServer } from "@apollo/server/standalone";
import { GraphQLError } from "graphql";
import jwt from "jsonwebtoken";
import pg from "pg";

// A key object made once: given the secret as a string, jsonwebtoken builds one per call, which
// measured 330 µs per verification here against 10 µs with the key object. The peer is tuned, not
// a strawman.
const SECRET = createSecretKey(Buffer.from(process.env.AGENTRY_JWT_SECRET, "utf8"));
const DATABASE_URL = process.env.DATABASE_URL;
const PORT = Number(process.env.PORT ?? 18083);
const WORKERS = Number(process.env.WORKERS ?? 2);
// Agentry's pool is 16 connections in one process; the workers share the same total.
const POOL_SIZE = Math.max(1, Math.floor(16 / WORKERS));

const AUTH_QUERY = `
SELECT u.id, u.email
FROM sessions s JOIN users u ON u.id = s.user_id
WHERE s.id = $1 AND s.user_id = $2 AND s.revoked_at IS NULL AND s.expires_at > now()
  AND u.status = 'ACTIVE'`;

const typeDefs = `#graphql
  type User {
    id: ID!
    email: String!
  }
  type Query {
    me: User
  }
`;

function unauthenticated(message) {
  return new GraphQLError(message, { extensions: { code: "UNAUTHENTICATED" } });
}

async function currentUser({ authorization, pool }) {
  if (!authorization || !authorization.toLowerCase().startsWith("bearer ")) {
    throw unauthenticated("authentication required");
  }
  let claims;
  try {
    claims = jwt.verify(authorization.slice(7).trim(), SECRET, {
      algorithms: ["HS256"],
      audience: "agentry-api",
      issuer: "agentry",
    });
  } catch {
    throw unauthenticated("invalid access token");
  }
  if (claims.typ !== "access" || !claims.sub || !claims.sid || !claims.exp) {
    throw unauthenticated("invalid access token");
  }
  // A named query is prepared once per connection by node-postgres, as diesel and asyncpg do.
  const { rows } = await pool.query({ name: "auth", text: AUTH_QUERY, values: [claims.sid, claims.sub] });
  if (rows.length === 0) {
    throw unauthenticated("session revoked");
  }
  return { id: rows[0].id, email: rows[0].email };
}

const resolvers = {
  Query: {
    me: (_parent, _args, context) => currentUser(context),
  },
};

async function worker() {
  const pool = new pg.Pool({ connectionString: DATABASE_URL, max: POOL_SIZE });
  const server = new ApolloServer({ typeDefs, resolvers });
  await startStandaloneServer(server, {
    listen: { port: PORT, host: "127.0.0.1" },
    context: async ({ req }) => ({ authorization: req.headers.authorization, pool }),
  });
}

if (cluster.isPrimary && WORKERS > 1) {
  let stopping = false;
  for (let i = 0; i < WORKERS; i += 1) cluster.fork();
  cluster.on("exit", (w, code) => {
    if (stopping) return;
    console.error(`apollo peer worker ${w.process.pid} exited with ${code}`);
    process.exit(1);
  });
  for (const signal of ["SIGTERM", "SIGINT"]) {
    process.on(signal, () => {
      stopping = true;
      for (const w of Object.values(cluster.workers)) w.process.kill("SIGTERM");
      process.exit(0);
    });
  }
} else {
  await worker();
}
