//! Profile, global account data and filters.

use axum::Json;
use axum::extract::State;
use cairn_core::ErrorKind;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::extract::{Authed, JsonBody, PathParams, user_id_param};
use crate::{ApiError, AppState};

type Answer = Result<Json<Value>, ApiError>;

pub(crate) async fn get_account_data(
    State(state): State<AppState>,
    Authed(me): Authed,
    PathParams((user_id, data_type)): PathParams<(String, String)>,
) -> Result<Json<Box<RawValue>>, ApiError> {
    let target = user_id_param(&user_id)?;
    Ok(Json(
        state
            .hs
            .account_data(&me.user_id, &target, &data_type)
            .await?,
    ))
}

pub(crate) async fn put_account_data(
    State(state): State<AppState>,
    Authed(me): Authed,
    PathParams((user_id, data_type)): PathParams<(String, String)>,
    JsonBody(content): JsonBody<Box<RawValue>>,
) -> Answer {
    let target = user_id_param(&user_id)?;
    state
        .hs
        .put_account_data(&me.user_id, &target, &data_type, &content)
        .await?;
    Ok(Json(json!({})))
}

pub(crate) async fn create_filter(
    State(state): State<AppState>,
    Authed(me): Authed,
    PathParams(user_id): PathParams<String>,
    JsonBody(filter): JsonBody<Box<RawValue>>,
) -> Answer {
    let target = user_id_param(&user_id)?;
    let filter_id = state
        .hs
        .create_filter(&me.user_id, &target, &filter)
        .await?;
    Ok(Json(json!({ "filter_id": filter_id })))
}

pub(crate) async fn get_filter(
    State(state): State<AppState>,
    Authed(me): Authed,
    PathParams((user_id, filter_id)): PathParams<(String, String)>,
) -> Result<Json<Box<RawValue>>, ApiError> {
    let target = user_id_param(&user_id)?;
    Ok(Json(
        state.hs.filter(&me.user_id, &target, &filter_id).await?,
    ))
}

pub(crate) async fn profile(
    State(state): State<AppState>,
    PathParams(user_id): PathParams<String>,
) -> Answer {
    let profile = state.hs.profile(&user_id_param(&user_id)?).await?;
    let mut body = json!({});
    if let Some(name) = profile.displayname {
        body["displayname"] = name.into();
    }
    if let Some(url) = profile.avatar_url {
        body["avatar_url"] = url.into();
    }
    Ok(Json(body))
}

async fn profile_field(state: &AppState, user_id: &str, field: &'static str) -> Answer {
    let profile = state.hs.profile(&user_id_param(user_id)?).await?;
    let value = if field == "displayname" {
        profile.displayname
    } else {
        profile.avatar_url
    };
    match value {
        Some(value) => Ok(Json(json!({ field: value }))),
        None => Err(ApiError::new(
            ErrorKind::NotFound,
            format!("No {field} set"),
        )),
    }
}

pub(crate) async fn displayname(
    State(state): State<AppState>,
    PathParams(user_id): PathParams<String>,
) -> Answer {
    profile_field(&state, &user_id, "displayname").await
}

pub(crate) async fn avatar_url(
    State(state): State<AppState>,
    PathParams(user_id): PathParams<String>,
) -> Answer {
    profile_field(&state, &user_id, "avatar_url").await
}

#[derive(Deserialize)]
pub(crate) struct DisplaynameBody {
    displayname: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct AvatarBody {
    avatar_url: Option<String>,
}

pub(crate) async fn set_displayname(
    State(state): State<AppState>,
    Authed(me): Authed,
    PathParams(user_id): PathParams<String>,
    JsonBody(body): JsonBody<DisplaynameBody>,
) -> Answer {
    let target = user_id_param(&user_id)?;
    state
        .hs
        .set_displayname(&me.user_id, &target, body.displayname.as_deref())
        .await?;
    Ok(Json(json!({})))
}

pub(crate) async fn set_avatar_url(
    State(state): State<AppState>,
    Authed(me): Authed,
    PathParams(user_id): PathParams<String>,
    JsonBody(body): JsonBody<AvatarBody>,
) -> Answer {
    let target = user_id_param(&user_id)?;
    state
        .hs
        .set_avatar_url(&me.user_id, &target, body.avatar_url.as_deref())
        .await?;
    Ok(Json(json!({})))
}
