//! Built-in templates: ready-made agents and crews a user instantiates in one mutation with
//! their own key and model. A template is plain data compiled into the server; instantiating
//! creates ordinary agents (and a crew) through the same services and rules as `createAgent`
//! and `createCrew`, so nothing about the result is special.

use diesel_async::{AsyncConnection, AsyncPgConnection};
use serde_json::json;

use crate::{
    agents::{self, model::AgentRow, service::AgentInput},
    crews::{
        model::{CrewProcess, CrewRow},
        service::{self, CrewInput, TaskInput},
    },
    error::{AppError, AppResult},
    request::Viewer,
    state::AppState,
    tools::AgentTool,
};

/// Whether a template makes one agent or a whole crew.
#[derive(Debug, Clone, Copy, PartialEq, Eq, async_graphql::Enum)]
pub enum TemplateKind {
    /// One agent.
    Agent,
    /// A crew with its agents.
    Crew,
}

/// An agent a template creates.
#[derive(Debug)]
pub struct AgentTemplate {
    /// Its name (a free variant is taken when the user already has one).
    pub name: &'static str,
    /// Role, goal and backstory, as on an agent.
    pub role: &'static str,
    /// What it works towards.
    pub goal: &'static str,
    /// Background that shapes its answers.
    pub backstory: &'static str,
    /// Its tools.
    pub tools: &'static [AgentTool],
}

/// A task of a crew template; `agent` is an index into the template's agents.
#[derive(Debug)]
pub struct TaskTemplate {
    /// What to do (with `{name}` placeholders).
    pub description: &'static str,
    /// What a good result looks like.
    pub expected_output: &'static str,
    /// Which of the template's agents does it.
    pub agent: Option<usize>,
}

/// A built-in template.
#[derive(Debug)]
pub struct Template {
    /// Stable id, used to instantiate it.
    pub id: &'static str,
    /// One agent or a crew.
    pub kind: TemplateKind,
    /// Display name (the crew's name for a crew template).
    pub name: &'static str,
    /// What it is for.
    pub description: &'static str,
    /// The agents it creates (the members, for a crew).
    pub agents: &'static [AgentTemplate],
    /// A crew's process.
    pub process: CrewProcess,
    /// A HIERARCHICAL crew's manager.
    pub manager: Option<AgentTemplate>,
    /// A crew's tasks.
    pub tasks: &'static [TaskTemplate],
}

const RESEARCHER: AgentTemplate = AgentTemplate {
    name: "Researcher",
    role: "a senior research analyst",
    goal: "find accurate facts on the topic you are given and say where each comes from",
    backstory: "You check claims against sources before you repeat them and you say plainly \
                when something is uncertain.",
    tools: &[AgentTool::Wikipedia, AgentTool::Calculator],
};

const WRITER: AgentTemplate = AgentTemplate {
    name: "Writer",
    role: "a technical writer",
    goal: "turn notes and facts into clear, well-structured prose for the audience you are given",
    backstory: "You write short sentences, explain jargon, and never add facts that are not in \
                your notes.",
    tools: &[],
};

const TRIAGE: AgentTemplate = AgentTemplate {
    name: "Triage Analyst",
    role: "a customer support triage analyst",
    goal: "classify each customer message by category and urgency and summarise it in one line",
    backstory: "You have sorted thousands of tickets; you spot outages, billing problems and \
                angry customers at once.",
    tools: &[],
};

const SUPPORT: AgentTemplate = AgentTemplate {
    name: "Support Specialist",
    role: "a friendly, precise customer support specialist",
    goal: "draft replies that solve the customer's problem or say exactly what happens next",
    backstory: "You answer with empathy and concrete steps, and you never promise what the \
                company cannot do.",
    tools: &[],
};

const SUPPORT_LEAD: AgentTemplate = AgentTemplate {
    name: "Support Lead",
    role: "the lead of a customer support team",
    goal: "get every customer message triaged and answered well, delegating to your team",
    backstory: "You know who on your team is best at what, and you check their work before it \
                goes out.",
    tools: &[],
};

/// Every built-in template, in the order they are listed.
pub static TEMPLATES: &[Template] = &[
    Template {
        id: "researcher",
        kind: TemplateKind::Agent,
        name: "Researcher",
        description: "An agent that researches a topic with Wikipedia and a calculator.",
        agents: &[RESEARCHER],
        process: CrewProcess::Sequential,
        manager: None,
        tasks: &[],
    },
    Template {
        id: "writer",
        kind: TemplateKind::Agent,
        name: "Writer",
        description: "An agent that turns notes into clear prose.",
        agents: &[WRITER],
        process: CrewProcess::Sequential,
        manager: None,
        tasks: &[],
    },
    Template {
        id: "research-and-write",
        kind: TemplateKind::Crew,
        name: "Research and write",
        description: "A researcher gathers facts on {topic}; a writer turns them into an \
                      article for {audience}. Sequential: the facts are passed on.",
        agents: &[RESEARCHER, WRITER],
        process: CrewProcess::Sequential,
        manager: None,
        tasks: &[
            TaskTemplate {
                description: "Research {topic}: find the most important, current facts.",
                expected_output: "A list of 5 to 10 facts, each with its source.",
                agent: Some(0),
            },
            TaskTemplate {
                description: "Write a short article about {topic} for {audience} from the \
                              researched facts.",
                expected_output: "An article of three to five paragraphs, in Markdown.",
                agent: Some(1),
            },
        ],
    },
    Template {
        id: "support-triage",
        kind: TemplateKind::Crew,
        name: "Support triage",
        description: "A support lead has a customer {message} triaged and answered by a \
                      triage analyst and a support specialist. Hierarchical: the lead \
                      delegates.",
        agents: &[TRIAGE, SUPPORT],
        process: CrewProcess::Hierarchical,
        manager: Some(SUPPORT_LEAD),
        tasks: &[
            TaskTemplate {
                description: "Triage this customer message: {message}",
                expected_output: "Category, urgency (low, normal, high, critical) and a \
                                  one-line summary.",
                agent: Some(0),
            },
            TaskTemplate {
                description: "Draft a reply to the customer message: {message}",
                expected_output: "A reply ready to send, and the triage result on top.",
                agent: Some(1),
            },
        ],
    },
];

/// The template `id`, or BAD_USER_INPUT naming `id`.
pub fn find(id: &str) -> AppResult<&'static Template> {
    TEMPLATES.iter().find(|t| t.id == id).ok_or_else(|| {
        let ids: Vec<&str> = TEMPLATES.iter().map(|t| t.id).collect();
        AppError::bad_input(
            "id",
            format!(
                "there is no template `{id}`; the templates are: {}",
                ids.join(", ")
            ),
        )
    })
}

/// What instantiating a template created.
pub struct Instance {
    /// The agents (the members, then the manager).
    pub agents: Vec<AgentRow>,
    /// The crew, for a crew template.
    pub crew: Option<CrewRow>,
}

/// Creates one agent of a template, under its name or the first free variant of it (`Writer
/// 2`, …).
async fn create_agent(
    conn: &mut AsyncPgConnection,
    viewer: &Viewer,
    template: &AgentTemplate,
    api_key_id: &str,
    model: &str,
) -> AppResult<AgentRow> {
    for attempt in 1..=20 {
        let name = match attempt {
            1 => template.name.to_owned(),
            n => format!("{} {n}", template.name),
        };
        let input = AgentInput {
            name,
            description: Some(format!("Created from the `{}` template.", template.name)),
            role: template.role.to_owned(),
            goal: template.goal.to_owned(),
            backstory: Some(template.backstory.to_owned()),
            api_key_id: api_key_id.to_owned(),
            model: model.to_owned(),
            temperature: None,
            max_output_tokens: None,
            tools: template
                .tools
                .iter()
                .map(|t| t.as_str().to_owned())
                .collect(),
            config: Some(json!({})),
        };
        match agents::service::create_on(conn, viewer, input).await {
            Err(AppError::Conflict(_)) => continue, // the name is taken: try the next
            other => return other,
        }
    }
    Err(AppError::Conflict(format!(
        "you already have agents named `{}` 1 to 20: rename some",
        template.name
    )))
}

/// Creates what template `id` describes for the viewer, every agent on their key `api_key_id`
/// with `model`, in one transaction: all or nothing. Errors name the argument (`apiKeyId`,
/// `model`) as `createAgent` names the input's field.
pub async fn instantiate(
    state: &AppState,
    viewer: &Viewer,
    id: &str,
    api_key_id: &str,
    model: &str,
) -> AppResult<Instance> {
    let template = find(id)?;
    let (api_key_id, model) = (api_key_id.to_owned(), model.to_owned());
    let mut conn = state.pool.get().await?;
    let result = conn
        .transaction::<_, AppError, _>(async |conn| {
            let mut created: Vec<AgentRow> = Vec::new();
            for agent in template.agents.iter().chain(template.manager.as_ref()) {
                created.push(create_agent(conn, viewer, agent, &api_key_id, &model).await?);
            }
            if template.kind == TemplateKind::Agent {
                return Ok(Instance {
                    agents: created,
                    crew: None,
                });
            }
            let crew = create_crew(conn, viewer, template, &created).await?;
            Ok(Instance {
                agents: created,
                crew: Some(crew),
            })
        })
        .await;
    // The errors of the input name `input.apiKeyId`: the argument here is `apiKeyId`.
    result.map_err(|e| match e {
        AppError::BadInput { field, message } => AppError::BadInput {
            field: field
                .strip_prefix("input.")
                .map(str::to_owned)
                .unwrap_or(field),
            message,
        },
        other => other,
    })
}

/// Creates a crew template's crew from its agents just created (the members, then the
/// manager), under its name or the first free variant of it.
async fn create_crew(
    conn: &mut AsyncPgConnection,
    viewer: &Viewer,
    template: &Template,
    created: &[AgentRow],
) -> AppResult<CrewRow> {
    let members = &created[..template.agents.len().min(created.len())];
    for attempt in 1..=20 {
        let name = match attempt {
            1 => template.name.to_owned(),
            n => format!("{} {n}", template.name),
        };
        let input = CrewInput {
            name,
            description: Some(template.description.to_owned()),
            process: template.process,
            agent_ids: members.iter().map(|a| a.id.to_string()).collect(),
            manager_agent_id: template
                .manager
                .as_ref()
                .and_then(|_| created.last())
                .map(|a| a.id.to_string()),
            tasks: template
                .tasks
                .iter()
                .map(|t| TaskInput {
                    description: t.description.to_owned(),
                    expected_output: t.expected_output.to_owned(),
                    agent_id: t
                        .agent
                        .and_then(|i| members.get(i))
                        .map(|a| a.id.to_string()),
                    context: None,
                })
                .collect(),
        };
        match service::create_on(conn, viewer, input).await {
            Err(AppError::Conflict(_)) => continue, // the name is taken: try the next
            other => return other,
        }
    }
    Err(AppError::Conflict(format!(
        "you already have crews named `{}` 1 to 20: rename some",
        template.name
    )))
}
