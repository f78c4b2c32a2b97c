"""The peer: a GraphQL server built the way the systems Agentry replaces are built.

FastAPI + Strawberry GraphQL + asyncpg + PyJWT, answering the benchmark's W1 (`{ __typename }`)
and W2 (`me { id email }`) against the same database and schema as Agentry. Access tokens are
Agentry's own (HS256, same secret, same `iss`/`aud`/`typ` checks), and `me` runs the same single
authentication query Agentry runs: the user of a live session, joined in one statement.

Run (bench/run does this): DATABASE_URL=… AGENTRY_JWT_SECRET=… \
    uvicorn app:app --workers 2 --host 127.0.0.1 --port 18082 --no-access-log
"""

import os
import uuid
from typing import Optional

import asyncpg
import jwt
import strawberry
from fastapi import FastAPI, Request
from strawberry.fastapi import GraphQLRouter
from strawberry.types import Info

SECRET = os.environ["AGENTRY_JWT_SECRET"]
DATABASE_URL = os.environ["DATABASE_URL"]
# Agentry's pool is 16 connections in one process; two workers of 8 hold the same total.
POOL_SIZE = int(os.environ.get("PEER_POOL_SIZE", "8"))

AUTH_QUERY = """
SELECT u.id, u.email
FROM sessions s JOIN users u ON u.id = s.user_id
WHERE s.id = $1 AND s.user_id = $2 AND s.revoked_at IS NULL AND s.expires_at > now()
  AND u.status = 'ACTIVE'
"""


class Unauthenticated(Exception):
    """No token, or an invalid, expired or revoked one."""


@strawberry.type
class User:
    id: strawberry.ID
    email: str


async def current_user(info: Info) -> Optional[User]:
    header = info.context["request"].headers.get("authorization", "")
    if not header.lower().startswith("bearer "):
        raise Unauthenticated("authentication required")
    try:
        claims = jwt.decode(
            header[7:].strip(),
            SECRET,
            algorithms=["HS256"],
            audience="agentry-api",
            issuer="agentry",
            options={"require": ["exp", "iss", "aud", "sub"]},
        )
    except jwt.PyJWTError as err:
        raise Unauthenticated("invalid access token") from err
    if claims.get("typ") != "access":
        raise Unauthenticated("invalid access token")
    pool: asyncpg.Pool = info.context["request"].app.state.pool
    row = await pool.fetchrow(AUTH_QUERY, uuid.UUID(claims["sid"]), uuid.UUID(claims["sub"]))
    if row is None:
        raise Unauthenticated("session revoked")
    return User(id=strawberry.ID(str(row["id"])), email=row["email"])


@strawberry.type
class Query:
    @strawberry.field
    async def me(self, info: Info) -> Optional[User]:
        return await current_user(info)


schema = strawberry.Schema(query=Query)
app = FastAPI()


@app.on_event("startup")
async def startup() -> None:
    app.state.pool = await asyncpg.create_pool(DATABASE_URL, min_size=POOL_SIZE, max_size=POOL_SIZE)


@app.on_event("shutdown")
async def shutdown() -> None:
    await app.state.pool.close()


async def get_context(request: Request) -> dict:
    return {"request": request}


app.include_router(GraphQLRouter(schema, context_getter=get_context, graphql_ide=None), prefix="/graphql")
