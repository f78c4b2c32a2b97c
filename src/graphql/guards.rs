//! Role guards: USER < ADMIN < OWNER, checked before a field resolves.

use async_graphql::{Context, Guard};

use crate::{error::AppError, graphql::context::request_context, users::model::Role};

/// Lets the field resolve only for signed-in users of at least this role.
pub struct RoleGuard(Role);

impl RoleGuard {
    /// Any signed-in user.
    pub const USER: Self = Self(Role::User);
    /// Admins and owners.
    pub const ADMIN: Self = Self(Role::Admin);
    /// Owners only.
    pub const OWNER: Self = Self(Role::Owner);
}

impl Guard for RoleGuard {
    async fn check(&self, ctx: &Context<'_>) -> async_graphql::Result<()> {
        let viewer = request_context(ctx)?.viewer()?;
        if viewer.role() < self.0 {
            return Err(AppError::Forbidden(format!(
                "this operation requires the {} role",
                self.0.as_str()
            ))
            .into());
        }
        Ok(())
    }
}
