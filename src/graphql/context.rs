//! What a resolver reads from its context: the shared state, the caller, and its id arguments.

use async_graphql::Context;
use uuid::Uuid;

use crate::{
    error::{AppError, AppResult},
    request::RequestContext,
    state::AppState,
};

/// The shared state from a resolver's context.
pub fn state<'a>(ctx: &Context<'a>) -> AppResult<&'a AppState> {
    ctx.data::<AppState>()
        .map_err(|_| AppError::Internal(anyhow::anyhow!("AppState missing from schema data")))
}

/// The current request's context (identity, request id, client address).
pub fn request_context<'a>(ctx: &Context<'a>) -> AppResult<&'a RequestContext> {
    ctx.data::<RequestContext>().map_err(|_| {
        AppError::Internal(anyhow::anyhow!("RequestContext missing from request data"))
    })
}

/// Parses an `ID` argument as a UUID, naming the argument when it is not one.
pub fn parse_id(field: &str, id: &async_graphql::ID) -> AppResult<Uuid> {
    Uuid::parse_str(id.as_str()).map_err(|_| AppError::bad_input(field, "is not a valid id"))
}
