//! GraphQL for the file workspace: list, read, upload (GraphQL multipart request spec, e.g.
//! apollo-upload-client) and delete. Downloads are plain HTTP: `GET /files/{id}` with the same
//! bearer token (see `http::files`).

use async_graphql::{Context, ID, Object, Upload};
use chrono::{DateTime, Utc};

use crate::{
    error::AppError,
    files::{model::FileRow, service},
    graphql::{
        guards::RoleGuard,
        pagination::{Page, PageOf},
        parse_id, request_context, state,
    },
};

/// A file in your workspace: uploaded, or written by one of your runs (FILES tool).
pub struct File(pub FileRow);

#[Object]
impl File {
    /// Stable id.
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    /// Name, unique among your files (paths and control characters removed).
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// Media type, judged from the content (`text/plain`, `application/pdf`, `image/png` …).
    async fn content_type(&self) -> &str {
        &self.0.content_type
    }
    /// Size in bytes.
    async fn size(&self) -> i32 {
        self.0.size
    }
    /// SHA-256 of the content, hex.
    async fn sha256(&self) -> &str {
        &self.0.sha256
    }
    /// The run that wrote it; null for uploads.
    async fn execution_id(&self) -> Option<ID> {
        self.0.execution_id.map(|id| ID(id.to_string()))
    }
    /// Where to download it: `GET` this path with `Authorization: Bearer <accessToken>`.
    async fn download_path(&self) -> String {
        format!("/files/{}", self.0.id)
    }
    /// When it was stored.
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
}

/// File queries.
#[derive(Default)]
pub struct FilesQuery;

#[Object]
impl FilesQuery {
    /// Your files, newest first.
    #[graphql(
        guard = "RoleGuard::USER",
        complexity = "first.unwrap_or(20).max(0) as usize * child_complexity"
    )]
    async fn files(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<PageOf<File>> {
        let viewer = request_context(ctx)?.viewer()?;
        let page = Page::of(ctx, first, after)?;
        let rows = service::page(
            &state(ctx)?.pool,
            viewer.id(),
            page.after,
            page.fetch_limit(),
        )
        .await?;
        Ok(page.connection(rows, |f| f.id, File))
    }

    /// One of your files; null if it does not exist or is not yours.
    #[graphql(guard = "RoleGuard::USER")]
    async fn file(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Option<File>> {
        let viewer = request_context(ctx)?.viewer()?;
        let id = parse_id("id", &id)?;
        match service::get(&state(ctx)?.pool, viewer.id(), id).await {
            Ok(row) => Ok(Some(File(row))),
            Err(AppError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// File mutations.
#[derive(Default)]
pub struct FilesMutation;

#[Object]
impl FilesMutation {
    /// Uploads a file (a multipart request: `operations`, `map` and the file part). `name`
    /// overrides the uploaded file name. Refused with BAD_USER_INPUT on `file` when a rule
    /// fails: size (AGENTRY_FILE_MAX_BYTES), count and total quota, a kind judged by the
    /// content (UTF-8 text, PDF, PNG or JPEG) agreeing with the name, a name already used.
    #[graphql(guard = "RoleGuard::USER")]
    async fn upload_file(
        &self,
        ctx: &Context<'_>,
        file: Upload,
        name: Option<String>,
    ) -> async_graphql::Result<File> {
        let viewer = request_context(ctx)?.viewer()?;
        let upload = file
            .value(ctx)
            .map_err(|_| AppError::bad_input("file", "the upload could not be read"))?;
        let name = name.unwrap_or(upload.filename);
        let state = state(ctx)?;
        let row = service::store(
            &state.pool,
            &state.config,
            viewer.id(),
            None,
            "file",
            &name,
            &upload.content,
        )
        .await?;
        Ok(File(row))
    }

    /// Deletes one of your files; NOT_FOUND if it does not exist or is not yours.
    #[graphql(guard = "RoleGuard::USER")]
    async fn delete_file(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<bool> {
        let viewer = request_context(ctx)?.viewer()?;
        let id = parse_id("id", &id)?;
        Ok(service::delete(&state(ctx)?.pool, viewer.id(), id).await?)
    }
}
