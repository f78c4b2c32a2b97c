//! Agent rules: every field checked with a clear error naming it, names unique per user, keys
//! must be the owner's and active.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::{
    agents::model::{self, AgentRow, AgentValues},
    api_keys,
    db::{Pool, schema::agents},
    error::{AppError, AppResult, unique_or},
    request::Viewer,
    state::AppState,
};

/// Largest `config`, serialised.
pub const MAX_CONFIG_BYTES: usize = 16 * 1024;

/// An agent definition as the client sent it (create) or as it results from an update.
#[derive(Debug, Clone)]
pub struct AgentInput {
    /// Name.
    pub name: String,
    /// Description.
    pub description: Option<String>,
    /// Role.
    pub role: String,
    /// Goal.
    pub goal: String,
    /// Backstory.
    pub backstory: Option<String>,
    /// Key id, as sent.
    pub api_key_id: String,
    /// Model.
    pub model: String,
    /// Temperature.
    pub temperature: Option<f64>,
    /// Output token cap.
    pub max_output_tokens: Option<i32>,
    /// Tool names.
    pub tools: Vec<String>,
    /// Configuration.
    pub config: Option<serde_json::Value>,
}

/// Changes to an agent; `None` keeps the current value. Nullable fields take `Some(None)` to
/// clear them.
#[derive(Debug, Clone, Default)]
pub struct AgentChanges {
    /// New name.
    pub name: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// New role.
    pub role: Option<String>,
    /// New goal.
    pub goal: Option<String>,
    /// New backstory.
    pub backstory: Option<String>,
    /// New key.
    pub api_key_id: Option<String>,
    /// New model.
    pub model: Option<String>,
    /// New temperature, or `Some(None)` for the provider default.
    pub temperature: Option<Option<f64>>,
    /// New output cap, or `Some(None)` for the provider default.
    pub max_output_tokens: Option<Option<i32>>,
    /// New tools.
    pub tools: Option<Vec<String>>,
    /// New configuration.
    pub config: Option<serde_json::Value>,
}

/// A text field as given: trimmed, at most `max` characters, no control characters but line
/// breaks and tabs; `required` refuses an empty one. Errors name `field`.
pub fn text(field: &str, raw: &str, required: bool, max: usize) -> AppResult<String> {
    let value = raw.trim();
    if required && value.is_empty() {
        return Err(AppError::bad_input(field, "must not be empty"));
    }
    let chars = value.chars().count();
    if chars > max {
        return Err(AppError::bad_input(
            field,
            format!("must be at most {max} characters (got {chars})"),
        ));
    }
    if value
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t' && c != '\r')
    {
        return Err(AppError::bad_input(
            field,
            "must not contain control characters",
        ));
    }
    Ok(value.to_owned())
}

/// Checks every field; `prefix` is how the client names the input object (`input`).
async fn validate(
    conn: &mut AsyncPgConnection,
    viewer: &Viewer,
    input: AgentInput,
    except: Option<Uuid>,
) -> AppResult<AgentValues> {
    let name = text("input.name", &input.name, true, 100)?;
    let description = text(
        "input.description",
        input.description.as_deref().unwrap_or(""),
        false,
        2000,
    )?;
    let role = text("input.role", &input.role, true, 2000)?;
    let goal = text("input.goal", &input.goal, true, 4000)?;
    let backstory = text(
        "input.backstory",
        input.backstory.as_deref().unwrap_or(""),
        false,
        8000,
    )?;
    let model = text("input.model", &input.model, true, 200)?;
    if model.chars().any(char::is_whitespace) {
        return Err(AppError::bad_input(
            "input.model",
            "must not contain spaces (e.g. gpt-4o-mini)",
        ));
    }
    if let Some(t) = input.temperature
        && !(0.0..=2.0).contains(&t)
    {
        return Err(AppError::bad_input(
            "input.temperature",
            format!("must be between 0 and 2 (got {t})"),
        ));
    }
    if let Some(n) = input.max_output_tokens
        && !(1..=200_000).contains(&n)
    {
        return Err(AppError::bad_input(
            "input.maxOutputTokens",
            format!("must be between 1 and 200000 (got {n})"),
        ));
    }
    let mut tools: Vec<Option<String>> = Vec::new();
    for tool in &input.tools {
        if crate::tools::AgentTool::from_name(tool).is_none() {
            return Err(AppError::bad_input(
                "input.tools",
                format!("unknown tool {tool}"),
            ));
        }
        if tools.iter().any(|t| t.as_deref() == Some(tool)) {
            return Err(AppError::bad_input(
                "input.tools",
                format!("{tool} is listed twice"),
            ));
        }
        tools.push(Some(tool.clone()));
    }
    let config = input.config.unwrap_or_else(|| serde_json::json!({}));
    if !config.is_object() {
        return Err(AppError::bad_input("input.config", "must be a JSON object"));
    }
    crate::tools::check_settings(&config)
        .and_then(|()| crate::threads::history::check_settings(&config))
        .map_err(|(field, rule)| AppError::bad_input(field, rule))?;
    let size = config.to_string().len();
    if size > MAX_CONFIG_BYTES {
        return Err(AppError::bad_input(
            "input.config",
            format!("must be at most {MAX_CONFIG_BYTES} bytes as JSON (got {size})"),
        ));
    }
    let api_key_id = Uuid::parse_str(input.api_key_id.trim())
        .map_err(|_| AppError::bad_input("input.apiKeyId", "is not a valid id"))?;
    let key = api_keys::model::find_owned(conn, viewer.id(), api_key_id)
        .await?
        .ok_or_else(|| AppError::bad_input("input.apiKeyId", "no API key of yours has this id"))?;
    if !key.is_active {
        return Err(AppError::bad_input(
            "input.apiKeyId",
            format!(
                "the key `{}` is inactive: activate it or choose another",
                key.name
            ),
        ));
    }
    if crate::llm::ProviderKind::from_stored(&key.provider).is_some_and(|k| !k.is_llm()) {
        return Err(AppError::bad_input(
            "input.apiKeyId",
            format!(
                "the key `{}` is a {} search key: an agent runs on an LLM key (search keys serve \
                 its WEB_SEARCH tool)",
                key.name, key.provider
            ),
        ));
    }
    if model::name_taken(conn, viewer.id(), &name, except).await? {
        return Err(duplicate_name());
    }
    Ok(AgentValues {
        api_key_id,
        name,
        description,
        role,
        goal,
        backstory,
        model,
        temperature: input.temperature,
        max_output_tokens: input.max_output_tokens,
        tools,
        config,
    })
}

fn duplicate_name() -> AppError {
    AppError::Conflict("you already have an agent with this name".into())
}

fn not_found() -> AppError {
    AppError::NotFound { what: "agent" }
}

/// Creates an agent.
pub async fn create(state: &AppState, viewer: &Viewer, input: AgentInput) -> AppResult<AgentRow> {
    let mut conn = state.pool.get().await?;
    create_on(&mut conn, viewer, input).await
}

/// Creates an agent on `conn` (inside the caller's transaction, when it has one): a taken name
/// is CONFLICT before anything is written, so a transaction survives it.
pub async fn create_on(
    conn: &mut AsyncPgConnection,
    viewer: &Viewer,
    input: AgentInput,
) -> AppResult<AgentRow> {
    let values = validate(conn, viewer, input, None).await?;
    let row = diesel::insert_into(agents::table)
        .values((
            agents::id.eq(Uuid::now_v7()),
            agents::user_id.eq(viewer.id()),
            &values,
        ))
        .returning(AgentRow::as_returning())
        .get_result(conn)
        .await
        .map_err(unique_or(duplicate_name))?;
    Ok(row)
}

/// A page of `user_id`'s agents, newest first, after the cursor id `before`, optionally only
/// active or inactive ones. The caller has checked that the viewer may list them.
pub async fn page(
    state: &AppState,
    user_id: Uuid,
    active: Option<bool>,
    before: Option<Uuid>,
    limit: i64,
) -> AppResult<Vec<AgentRow>> {
    let mut conn = state.pool.get().await?;
    Ok(model::page_owned(&mut conn, user_id, active, before, limit).await?)
}

/// The viewer's agent, or `NOT_FOUND`.
pub async fn get(state: &AppState, viewer: &Viewer, id: Uuid) -> AppResult<AgentRow> {
    let mut conn = state.pool.get().await?;
    model::find_owned(&mut conn, viewer.id(), id)
        .await?
        .ok_or_else(not_found)
}

/// Applies changes to an agent, checking the result as a whole.
pub async fn update(
    state: &AppState,
    viewer: &Viewer,
    id: Uuid,
    changes: AgentChanges,
) -> AppResult<AgentRow> {
    let mut conn = state.pool.get().await?;
    let current = model::find_owned(&mut conn, viewer.id(), id)
        .await?
        .ok_or_else(not_found)?;
    let merged = AgentInput {
        name: changes.name.unwrap_or(current.name),
        description: Some(changes.description.unwrap_or(current.description)),
        role: changes.role.unwrap_or(current.role),
        goal: changes.goal.unwrap_or(current.goal),
        backstory: Some(changes.backstory.unwrap_or(current.backstory)),
        api_key_id: changes
            .api_key_id
            .unwrap_or_else(|| current.api_key_id.to_string()),
        model: changes.model.unwrap_or(current.model),
        temperature: changes.temperature.unwrap_or(current.temperature),
        max_output_tokens: changes
            .max_output_tokens
            .unwrap_or(current.max_output_tokens),
        tools: changes
            .tools
            .unwrap_or_else(|| current.tools.into_iter().flatten().collect()),
        config: Some(changes.config.unwrap_or(current.config)),
    };
    let values = validate(&mut conn, viewer, merged, Some(id)).await?;
    let row = diesel::update(agents::table.find(id))
        .filter(agents::user_id.eq(viewer.id()))
        .set((&values, agents::updated_at.eq(diesel::dsl::now)))
        .returning(AgentRow::as_returning())
        .get_result(&mut conn)
        .await
        .map_err(unique_or(duplicate_name))?;
    Ok(row)
}

/// Turns an agent on or off (inactive agents cannot run).
pub async fn set_active(
    state: &AppState,
    viewer: &Viewer,
    id: Uuid,
    active: bool,
) -> AppResult<AgentRow> {
    let mut conn = state.pool.get().await?;
    model::set_active_owned(&mut conn, viewer.id(), id, active)
        .await?
        .ok_or_else(not_found)
}

/// Deletes an agent with its runs and their events. Refused while a run is in progress.
pub async fn delete(state: &AppState, viewer: &Viewer, id: Uuid) -> AppResult<bool> {
    let mut conn = state.pool.get().await?;
    model::find_owned(&mut conn, viewer.id(), id)
        .await?
        .ok_or_else(not_found)?;
    let running = crate::executions::model::count_unfinished_of_agent(&mut conn, id).await?;
    if running > 0 {
        return Err(AppError::Conflict(format!(
            "the agent has {running} run(s) in progress: cancel them first"
        )));
    }
    diesel::delete(agents::table.find(id))
        .filter(agents::user_id.eq(viewer.id()))
        .execute(&mut conn)
        .await?;
    Ok(true)
}

/// Agents by id, for the request's DataLoader. No owner filter: the ids come from rows the
/// viewer was already allowed to read (a run's agent), never from a client.
pub async fn by_ids(pool: &Pool, ids: &[Uuid]) -> AppResult<Vec<AgentRow>> {
    let mut conn = pool.get().await?;
    Ok(model::by_ids(&mut conn, ids).await?)
}

/// The system prompt built from an agent's role, goal and backstory.
pub fn system_prompt(agent: &AgentRow) -> String {
    let mut prompt = format!("You are {}.\n\nYour goal: {}", agent.role, agent.goal);
    if !agent.backstory.is_empty() {
        prompt.push_str(&format!("\n\nBackstory: {}", agent.backstory));
    }
    prompt
}
