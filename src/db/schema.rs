// @generated automatically by Diesel CLI.

diesel::table! {
    agents (id) {
        id -> Uuid,
        user_id -> Uuid,
        api_key_id -> Uuid,
        name -> Text,
        description -> Text,
        role -> Text,
        goal -> Text,
        backstory -> Text,
        model -> Text,
        temperature -> Nullable<Float8>,
        max_output_tokens -> Nullable<Int4>,
        tools -> Array<Nullable<Text>>,
        config -> Jsonb,
        is_active -> Bool,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    api_keys (id) {
        id -> Uuid,
        user_id -> Uuid,
        name -> Text,
        provider -> Text,
        endpoint -> Nullable<Text>,
        secret_ciphertext -> Bytea,
        masked_key -> Text,
        is_active -> Bool,
        last_used_at -> Nullable<Timestamptz>,
        last_tested_at -> Nullable<Timestamptz>,
        last_test_ok -> Nullable<Bool>,
        last_test_message -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    audit_log (id) {
        id -> Uuid,
        actor_id -> Nullable<Uuid>,
        action -> Text,
        target_user_id -> Nullable<Uuid>,
        details -> Jsonb,
        request_id -> Nullable<Text>,
        ip -> Nullable<Text>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    budgets (id) {
        id -> Uuid,
        user_id -> Uuid,
        scope -> Text,
        api_key_id -> Nullable<Uuid>,
        agent_id -> Nullable<Uuid>,
        set_by_admin -> Bool,
        monthly_limit_micros -> Nullable<Int8>,
        run_token_limit -> Nullable<Int8>,
        spent_month -> Date,
        spent_micros -> Int8,
        alerted_percent -> Int4,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    crew_runs (id) {
        id -> Uuid,
        user_id -> Uuid,
        crew_id -> Nullable<Uuid>,
        crew_name -> Text,
        process -> Text,
        inputs -> Jsonb,
        status -> Text,
        output -> Text,
        error -> Nullable<Text>,
        cancel_requested -> Bool,
        heartbeat_at -> Timestamptz,
        created_at -> Timestamptz,
        started_at -> Nullable<Timestamptz>,
        finished_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    crews (id) {
        id -> Uuid,
        user_id -> Uuid,
        name -> Text,
        description -> Text,
        process -> Text,
        manager_agent_id -> Nullable<Uuid>,
        agent_ids -> Array<Uuid>,
        tasks -> Jsonb,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    execution_events (execution_id, sequence) {
        execution_id -> Uuid,
        sequence -> Int4,
        kind -> Text,
        delta -> Nullable<Text>,
        data -> Nullable<Jsonb>,
        at -> Timestamptz,
    }
}

diesel::table! {
    executions (id) {
        id -> Uuid,
        user_id -> Uuid,
        agent_id -> Uuid,
        api_key_id -> Nullable<Uuid>,
        provider -> Text,
        model -> Text,
        status -> Text,
        input -> Text,
        output -> Text,
        error -> Nullable<Text>,
        input_tokens -> Int8,
        output_tokens -> Int8,
        cost_micros -> Int8,
        cost_estimated -> Bool,
        last_sequence -> Int4,
        cancel_requested -> Bool,
        heartbeat_at -> Timestamptz,
        created_at -> Timestamptz,
        started_at -> Nullable<Timestamptz>,
        finished_at -> Nullable<Timestamptz>,
        thread_id -> Nullable<Uuid>,
        crew_run_id -> Nullable<Uuid>,
        crew_role -> Nullable<Text>,
        crew_task -> Nullable<Int4>,
    }
}

diesel::table! {
    threads (id) {
        id -> Uuid,
        user_id -> Uuid,
        agent_id -> Uuid,
        title -> Text,
        created_at -> Timestamptz,
        last_activity_at -> Timestamptz,
    }
}

diesel::table! {
    idempotency_keys (user_id, key) {
        user_id -> Uuid,
        key -> Text,
        request_hash -> Bytea,
        execution_id -> Uuid,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    oauth_accounts (id) {
        id -> Uuid,
        user_id -> Uuid,
        provider -> Text,
        subject -> Text,
        email -> Nullable<Text>,
        access_token_ciphertext -> Bytea,
        refresh_token_ciphertext -> Nullable<Bytea>,
        expires_at -> Nullable<Timestamptz>,
        is_connected -> Bool,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    oauth_states (id) {
        id -> Uuid,
        state_hash -> Bytea,
        provider -> Text,
        intent -> Text,
        user_id -> Nullable<Uuid>,
        pkce_verifier_ciphertext -> Bytea,
        redirect_uri -> Text,
        expires_at -> Timestamptz,
        used_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
        browser_binding_hash -> Nullable<Bytea>,
    }
}

diesel::table! {
    retired_refresh_tokens (token_hash) {
        token_hash -> Bytea,
        session_id -> Uuid,
        retired_at -> Timestamptz,
    }
}

diesel::table! {
    sessions (id) {
        id -> Uuid,
        user_id -> Uuid,
        refresh_token_hash -> Bytea,
        created_at -> Timestamptz,
        last_used_at -> Timestamptz,
        expires_at -> Timestamptz,
        revoked_at -> Nullable<Timestamptz>,
        revoked_reason -> Nullable<Text>,
        user_agent -> Nullable<Text>,
        ip -> Nullable<Text>,
    }
}

diesel::table! {
    users (id) {
        id -> Uuid,
        email -> Text,
        display_name -> Text,
        password_hash -> Nullable<Text>,
        role -> Text,
        status -> Text,
        suspended_reason -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        last_login_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    files (id) {
        id -> Uuid,
        user_id -> Uuid,
        execution_id -> Nullable<Uuid>,
        name -> Text,
        content_type -> Text,
        size -> Int4,
        sha256 -> Text,
        content -> Bytea,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    webhooks (id) {
        id -> Uuid,
        user_id -> Uuid,
        url -> Text,
        description -> Text,
        events -> Array<Text>,
        secret_ciphertext -> Bytea,
        is_active -> Bool,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    webhook_deliveries (id) {
        id -> Uuid,
        webhook_id -> Uuid,
        user_id -> Uuid,
        event_type -> Text,
        payload -> Jsonb,
        status -> Text,
        attempt_count -> Int4,
        attempts -> Jsonb,
        next_attempt_at -> Timestamptz,
        delivered_at -> Nullable<Timestamptz>,
        created_at -> Timestamptz,
    }
}

diesel::joinable!(agents -> api_keys (api_key_id));
diesel::joinable!(agents -> users (user_id));
diesel::joinable!(api_keys -> users (user_id));
diesel::joinable!(budgets -> agents (agent_id));
diesel::joinable!(budgets -> api_keys (api_key_id));
diesel::joinable!(budgets -> users (user_id));
diesel::joinable!(crew_runs -> crews (crew_id));
diesel::joinable!(crew_runs -> users (user_id));
diesel::joinable!(crews -> users (user_id));
diesel::joinable!(execution_events -> executions (execution_id));
diesel::joinable!(executions -> crew_runs (crew_run_id));
diesel::joinable!(executions -> agents (agent_id));
diesel::joinable!(executions -> api_keys (api_key_id));
diesel::joinable!(executions -> users (user_id));
diesel::joinable!(files -> executions (execution_id));
diesel::joinable!(files -> users (user_id));
diesel::joinable!(idempotency_keys -> executions (execution_id));
diesel::joinable!(idempotency_keys -> users (user_id));
diesel::joinable!(oauth_accounts -> users (user_id));
diesel::joinable!(oauth_states -> users (user_id));
diesel::joinable!(retired_refresh_tokens -> sessions (session_id));
diesel::joinable!(sessions -> users (user_id));
diesel::joinable!(executions -> threads (thread_id));
diesel::joinable!(threads -> agents (agent_id));
diesel::joinable!(threads -> users (user_id));
diesel::joinable!(webhook_deliveries -> webhooks (webhook_id));
diesel::joinable!(webhooks -> users (user_id));

diesel::allow_tables_to_appear_in_same_query!(
    agents,
    api_keys,
    audit_log,
    budgets,
    crew_runs,
    crews,
    execution_events,
    executions,
    files,
    idempotency_keys,
    oauth_accounts,
    oauth_states,
    retired_refresh_tokens,
    sessions,
    threads,
    users,
    webhook_deliveries,
    webhooks,
);
