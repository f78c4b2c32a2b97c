//! FILES: the run's owner's file workspace — `list_files`, `read_file` (text files, bounded by
//! the tool result bound) and `write_file` (a new text file linked to the run, checked by the
//! same rules as an upload). Only the owner's files are ever visible.

use serde_json::json;
use uuid::Uuid;

use crate::{config::Config, db::Pool, files::service, llm::provider::ToolSpec};

/// Most files listed for the model.
const MAX_LISTED: i64 = 100;
/// Most files one run may write.
pub const MAX_WRITES_PER_RUN: usize = 20;

/// The `list_files` function.
pub fn list_spec() -> ToolSpec {
    ToolSpec {
        name: "list_files",
        description: "List the user's files (newest first): name, type and size.",
        parameters: json!({"type": "object", "properties": {}, "additionalProperties": false}),
    }
}

/// The `read_file` function.
pub fn read_spec() -> ToolSpec {
    ToolSpec {
        name: "read_file",
        description: "Read one of the user's text files (txt, md, csv, json …) by name. Long \
            files are cut.",
        parameters: json!({
            "type": "object",
            "properties": {"name": {"type": "string", "description": "the file's name, as listed"}},
            "required": ["name"],
            "additionalProperties": false
        }),
    }
}

/// The `write_file` function.
pub fn write_spec() -> ToolSpec {
    ToolSpec {
        name: "write_file",
        description: "Save text as a new file in the user's workspace (e.g. report.md). The \
            name must not be taken.",
        parameters: json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "description": "a new file name, e.g. summary.md"},
                "content": {"type": "string", "description": "the text to save"}
            },
            "required": ["name", "content"],
            "additionalProperties": false
        }),
    }
}

/// The user's files, one per line.
pub async fn list(pool: &Pool, user_id: Uuid) -> Result<String, String> {
    let rows = service::page(pool, user_id, None, MAX_LISTED)
        .await
        .map_err(|e| e.message())?;
    if rows.is_empty() {
        return Ok("The user has no files.".into());
    }
    Ok(rows
        .iter()
        .map(|f| format!("{} ({}, {} bytes)", f.name, f.content_type, f.size))
        .collect::<Vec<_>>()
        .join("\n"))
}

/// The text of the user's file `name`.
pub async fn read(pool: &Pool, user_id: Uuid, name: &str) -> Result<String, String> {
    let (row, bytes) = service::read_named(pool, user_id, name.trim())
        .await
        .map_err(|_| {
            format!(
                "there is no file named `{}`: list_files shows them",
                name.trim()
            )
        })?;
    if !service::is_text(&row.content_type) {
        return Err(format!(
            "`{}` is {}, not text: it cannot be read as text",
            row.name, row.content_type
        ));
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Stores `content` as the new file `name`, linked to the run.
pub async fn write(
    pool: &Pool,
    config: &Config,
    user_id: Uuid,
    execution_id: Uuid,
    name: &str,
    content: &str,
) -> Result<String, String> {
    let row = service::store(
        pool,
        config,
        user_id,
        Some(execution_id),
        "name",
        name,
        content.as_bytes(),
    )
    .await
    .map_err(|e| e.message())?;
    Ok(format!("Saved {} ({} bytes).", row.name, row.size))
}
