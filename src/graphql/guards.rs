//! Role guards: USER < ADMIN < OWNER, checked before a field resolves.

use async_graphql::{Context, Guard};

use crate::{error::AppError, graphql::request_context};

/// Lets the field resolve only for signed-in users of at least this role rank.
pub struct RoleGuard {
    min_rank: u8,
    name: &'static str,
}

impl RoleGuard {
    /// Any signed-in user.
    pub const USER: Self = Self {
        min_rank: 0,
        name: "USER",
    };
    /// Admins and owners.
    pub const ADMIN: Self = Self {
        min_rank: 1,
        name: "ADMIN",
    };
    /// Owners only.
    pub const OWNER: Self = Self {
        min_rank: 2,
        name: "OWNER",
    };
}

impl Guard for RoleGuard {
    async fn check(&self, ctx: &Context<'_>) -> async_graphql::Result<()> {
        let viewer = request_context(ctx)?.viewer()?;
        if viewer.rank() < self.min_rank {
            return Err(AppError::Forbidden(format!(
                "this operation requires the {} role",
                self.name
            ))
            .into());
        }
        Ok(())
    }
}
