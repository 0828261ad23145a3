//! The fake Discord REST API speaks the wire format serenity expects: every
//! request here goes through serenity's own HTTP client and builders, and
//! every answer must deserialize into serenity's models.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fake_discord;

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};
use serenity::all::{
    ApplicationId, AutoArchiveDuration, ButtonStyle, ChannelId, ChannelType, CreateActionRow,
    CreateButton, CreateCommand, CreateCommandOption, CreateEmbed, CreateEmbedFooter,
    CreateInteractionResponse, CreateInteractionResponseFollowup, CreateInteractionResponseMessage,
    CreateMessage, CreateThread, EditInteractionResponse, EditMessage, GuildId, InteractionId,
    MessageId, RoleId, UserId,
};
use serenity::http::{Http, HttpBuilder, HttpError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use fake_discord::{FakeDiscord, APPLICATION_ID, BOT_TOKEN, BOT_USER_ID, GUILD_ID};

const CHANNEL: &str = "1500000000000000001";
const ALICE: &str = "1600000000000000001";
const APPROVER_ROLE: &str = "1700000000000000001";

fn id(s: &str) -> u64 {
    s.parse().unwrap()
}

fn http_with(fake: &FakeDiscord, token: &str) -> Http {
    let _ = rustls::crypto::ring::default_provider().install_default();
    HttpBuilder::new(token)
        .proxy(fake.proxy())
        .ratelimiter_disabled(true)
        .application_id(ApplicationId::new(id(APPLICATION_ID)))
        .build()
}

fn http(fake: &FakeDiscord) -> Http {
    http_with(fake, BOT_TOKEN)
}

/// The HTTP status and Discord error code of a refused request.
fn refusal(err: serenity::Error) -> (u16, isize) {
    match err {
        serenity::Error::Http(HttpError::UnsuccessfulRequest(r)) => {
            (r.status_code.as_u16(), r.error.code)
        }
        other => panic!("not an HTTP refusal: {other:?}"),
    }
}

/// A request written by hand, to see the headers serenity does not expose.
async fn raw_post(fake: &FakeDiscord, path: &str, body: &str) -> (u16, HashMap<String, String>) {
    let addr = fake.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bot {BOT_TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let (head, _) = answer.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers)
}

fn approval_message() -> CreateMessage {
    let embed = CreateEmbed::new()
        .title("Access request")
        .description("alice asks for ssh on web-1")
        .field("Instance", "i-0123456789abcdef0", true)
        .footer(CreateEmbedFooter::new("Passport"));
    let buttons = CreateActionRow::Buttons(vec![
        CreateButton::new("approve:1")
            .label("Approve")
            .style(ButtonStyle::Success),
        CreateButton::new("deny:1")
            .label("Deny")
            .style(ButtonStyle::Danger),
    ]);
    CreateMessage::new()
        .content("New request")
        .embed(embed)
        .components(vec![buttons])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_edit_thread_dm_and_member_round_trip() {
    let fake = FakeDiscord::start().await;
    fake.add_channel(CHANNEL);
    fake.add_member(ALICE, "alice", &[APPROVER_ROLE]);
    let http = http(&fake);
    let channel = ChannelId::new(id(CHANNEL));

    // A message with an embed and buttons.
    let msg = channel
        .send_message(&http, approval_message())
        .await
        .unwrap();
    assert_eq!(msg.channel_id, channel);
    assert_eq!(msg.author.id, UserId::new(id(BOT_USER_ID)));
    assert!(msg.author.bot);
    assert_eq!(msg.content, "New request");
    assert_eq!(msg.embeds.len(), 1);
    assert_eq!(msg.embeds[0].title.as_deref(), Some("Access request"));
    assert_eq!(msg.embeds[0].fields[0].value, "i-0123456789abcdef0");
    assert_eq!(msg.components.len(), 1);
    assert_eq!(msg.components[0].components.len(), 2);
    assert_eq!(msg.guild_id, Some(GuildId::new(id(GUILD_ID))));
    assert!(msg.edited_timestamp.is_none());
    let msg_id = msg.id.to_string();
    let posts = fake.posts_in(CHANNEL);
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].message.as_deref(), Some(msg_id.as_str()));
    assert_eq!(posts[0].custom_ids(), ["approve:1", "deny:1"]);
    assert!(posts[0].embed_text().contains("alice asks for ssh"));

    // Edit it: new content, buttons gone.
    let edited = channel
        .edit_message(
            &http,
            msg.id,
            EditMessage::new().content("Approved").components(vec![]),
        )
        .await
        .unwrap();
    assert_eq!(edited.id, msg.id);
    assert_eq!(edited.content, "Approved");
    assert!(edited.edited_timestamp.is_some());
    assert!(edited.components.is_empty());
    assert_eq!(edited.embeds.len(), 1, "embeds not sent are kept");
    assert_eq!(fake.edits(&msg_id).len(), 1);
    let body = fake.message_body(&msg_id).unwrap();
    assert_eq!(body["content"], "Approved");
    assert_eq!(body["components"], json!([]));

    // A thread from it: the thread's id is the message's id.
    let thread = channel
        .create_thread_from_message(
            &http,
            msg.id,
            CreateThread::new("Request 1").auto_archive_duration(AutoArchiveDuration::OneDay),
        )
        .await
        .unwrap();
    assert_eq!(thread.id.get(), msg.id.get());
    assert_eq!(thread.kind, ChannelType::PublicThread);
    assert_eq!(thread.parent_id, Some(channel));
    assert_eq!(thread.name, "Request 1");
    assert_eq!(
        thread.thread_metadata.unwrap().auto_archive_duration,
        AutoArchiveDuration::OneDay
    );
    assert!(fake.has_thread(&msg_id));
    let reply = thread.id.say(&http, "Granted for 1h").await.unwrap();
    assert_eq!(reply.channel_id, thread.id);
    assert_eq!(fake.thread(&msg_id), ["Granted for 1h"]);
    assert_eq!(
        fake.posts_in(CHANNEL).len(),
        1,
        "thread posts are not top-level posts"
    );

    // A second thread from the same message is refused as Discord does.
    let again = channel
        .create_thread_from_message(&http, msg.id, CreateThread::new("Again"))
        .await
        .unwrap_err();
    assert_eq!(refusal(again), (400, 160_004));

    // The message now says it has a thread.
    let with_thread: serenity::all::Message =
        serde_json::from_value(fake.message_json(&msg_id).unwrap()).unwrap();
    assert_eq!(with_thread.thread.unwrap().id, thread.id);

    // A DM: the same channel each time, and posts land in it.
    let alice = UserId::new(id(ALICE));
    let dm = alice.create_dm_channel(&http).await.unwrap();
    assert_eq!(dm.recipient.id, alice);
    assert_eq!(dm.recipient.name, "alice");
    assert_eq!(dm.kind, ChannelType::Private);
    let dm_again = alice.create_dm_channel(&http).await.unwrap();
    assert_eq!(dm_again.id, dm.id);
    let dm_msg = dm.id.say(&http, "Your access is approved").await.unwrap();
    assert_eq!(dm_msg.channel_id, dm.id);
    assert!(dm_msg.guild_id.is_none());
    assert_eq!(fake.dms(ALICE), ["Your access is approved"]);
    assert_eq!(fake.dm_calls(ALICE).len(), 1);

    // A member, and one who is not.
    let guild = GuildId::new(id(GUILD_ID));
    let member = guild.member(&http, alice).await.unwrap();
    assert_eq!(member.user.id, alice);
    assert_eq!(member.user.name, "alice");
    assert_eq!(member.roles, [RoleId::new(id(APPROVER_ROLE))]);
    fake.set_member_roles(ALICE, &[]);
    assert!(guild.member(&http, alice).await.unwrap().roles.is_empty());
    let stranger = guild
        .member(&http, UserId::new(1_600_000_000_000_000_999))
        .await
        .unwrap_err();
    assert_eq!(refusal(stranger), (404, 10007));

    assert!(fake.errors().iter().all(|c| c.status != 401));
}

/// What `passport doctor` reads: channels of each kind (and the refusals for
/// one the bot may not view and one that does not exist) and the guild's roles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_and_roles_read_as_serenity_models() {
    use serenity::all::Channel;
    let fake = FakeDiscord::start().await;
    fake.add_channel(CHANNEL);
    fake.add_hidden_channel("1500000000000000002");
    fake.add_member(ALICE, "alice", &[]);
    fake.add_role(APPROVER_ROLE, "approvers");
    let http = http(&fake);
    let channel = ChannelId::new(id(CHANNEL));

    let Channel::Guild(text) = http.get_channel(channel).await.unwrap() else {
        panic!("not a guild channel");
    };
    assert_eq!(text.kind, ChannelType::Text);
    assert_eq!(text.guild_id, GuildId::new(id(GUILD_ID)));
    assert_eq!(text.name, format!("channel-{CHANNEL}"));

    // A thread and a DM read as their own kinds.
    let msg = channel.say(&http, "card").await.unwrap();
    channel
        .create_thread_from_message(&http, msg.id, CreateThread::new("Request 1"))
        .await
        .unwrap();
    let Channel::Guild(thread) = http
        .get_channel(ChannelId::new(msg.id.get()))
        .await
        .unwrap()
    else {
        panic!("not a guild channel");
    };
    assert_eq!(thread.kind, ChannelType::PublicThread);
    assert_eq!(thread.parent_id, Some(channel));
    let dm = UserId::new(id(ALICE))
        .create_dm_channel(&http)
        .await
        .unwrap();
    assert!(matches!(
        http.get_channel(dm.id).await.unwrap(),
        Channel::Private(_)
    ));

    let hidden = http
        .get_channel(ChannelId::new(1_500_000_000_000_000_002))
        .await
        .unwrap_err();
    assert_eq!(refusal(hidden), (403, 50_001));
    let gone = http
        .get_channel(ChannelId::new(1_500_000_000_000_000_009))
        .await
        .unwrap_err();
    assert_eq!(refusal(gone), (404, 10_003));

    let roles = http
        .get_guild_roles(GuildId::new(id(GUILD_ID)))
        .await
        .unwrap();
    let names: Vec<(u64, &str)> = roles
        .iter()
        .map(|r| (r.id.get(), r.name.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            (id(GUILD_ID), "@everyone"),
            (id(APPROVER_ROLE), "approvers")
        ]
    );
    let other = http
        .get_guild_roles(GuildId::new(1_300_000_000_000_000_999))
        .await
        .unwrap_err();
    assert_eq!(refusal(other), (404, 10_004));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_look_like_discords() {
    let fake = FakeDiscord::start().await;
    fake.add_channel(CHANNEL);
    let http = http(&fake);
    let channel = ChannelId::new(id(CHANNEL));

    // Unknown channel.
    let err = ChannelId::new(1_500_000_000_000_000_999)
        .say(&http, "hello")
        .await
        .unwrap_err();
    assert_eq!(refusal(err), (404, 10003));

    // Unknown message.
    let err = channel
        .edit_message(&http, MessageId::new(42), EditMessage::new().content("x"))
        .await
        .unwrap_err();
    assert_eq!(refusal(err), (404, 10008));

    // Over the content limit (serenity's builder would refuse it before
    // sending, so send the raw body).
    let long = "x".repeat(2001);
    let err = http
        .send_message(channel, vec![], &json!({ "content": long }))
        .await
        .unwrap_err();
    match err {
        serenity::Error::Http(HttpError::UnsuccessfulRequest(r)) => {
            assert_eq!(r.status_code.as_u16(), 400);
            assert_eq!(r.error.code, 50035);
            assert_eq!(r.error.errors[0].path, "content");
            assert_eq!(r.error.errors[0].code, "BASE_TYPE_MAX_LENGTH");
        }
        other => panic!("{other:?}"),
    }
    let exactly = "x".repeat(2000);
    http.send_message(channel, vec![], &json!({ "content": exactly }))
        .await
        .unwrap();

    // Too many embed characters in total, a long button label, a repeated
    // custom_id: all reported with their paths.
    let body = json!({
        "embeds": [
            { "description": "d".repeat(4000) },
            { "description": "d".repeat(2001) },
        ],
        "components": [{ "type": 1, "components": [
            { "type": 2, "style": 1, "custom_id": "a", "label": "l".repeat(81) },
            { "type": 2, "style": 1, "custom_id": "a", "label": "ok" },
            { "type": 2, "style": 5, "label": "link" },
        ]}],
    });
    let err = http.send_message(channel, vec![], &body).await.unwrap_err();
    match err {
        serenity::Error::Http(HttpError::UnsuccessfulRequest(r)) => {
            assert_eq!(r.error.code, 50035);
            let mut paths: Vec<(String, String)> = r
                .error
                .errors
                .iter()
                .map(|e| (e.path.clone(), e.code.clone()))
                .collect();
            paths.sort();
            assert_eq!(
                paths,
                [
                    (
                        "components.0.components.0.label".to_owned(),
                        "BASE_TYPE_MAX_LENGTH".to_owned()
                    ),
                    (
                        "components.0.components.1.custom_id".to_owned(),
                        "COMPONENT_CUSTOM_ID_DUPLICATED".to_owned()
                    ),
                    (
                        "components.0.components.2.url".to_owned(),
                        "BUTTON_COMPONENT_URL_REQUIRED".to_owned()
                    ),
                    ("embeds".to_owned(), "MAX_EMBED_SIZE_EXCEEDED".to_owned()),
                ]
            );
        }
        other => panic!("{other:?}"),
    }

    // Nothing to send.
    let err = channel
        .send_message(&http, CreateMessage::new())
        .await
        .unwrap_err();
    assert_eq!(refusal(err), (400, 50006));

    // A thread name too long.
    let msg = channel.say(&http, "hello").await.unwrap();
    let err = channel
        .create_thread_from_message(&http, msg.id, CreateThread::new("n".repeat(101)))
        .await
        .unwrap_err();
    assert_eq!(refusal(err), (400, 50035));
    assert!(!fake.has_thread(&msg.id.to_string()));

    // A wrong token.
    let intruder = http_with(&fake, "not-the-token");
    let err = channel.say(&intruder, "hello").await.unwrap_err();
    assert_eq!(refusal(err).0, 401);

    // Something the fake does not know.
    let err = channel
        .messages(&http, serenity::all::GetMessages::new())
        .await;
    assert_eq!(refusal(err.unwrap_err()), (404, 0));
    assert_eq!(fake.calls().last().unwrap().route, "unknown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_look_like_discords() {
    let fake = FakeDiscord::start().await;
    fake.add_channel(CHANNEL);
    let http = http(&fake);
    let channel = ChannelId::new(id(CHANNEL));

    // Successful answers carry Discord's rate-limit headers.
    let path = format!("/api/v10/channels/{CHANNEL}/messages");
    let (status, headers) = raw_post(&fake, &path, r#"{"content":"hi"}"#).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-ratelimit-limit"], "5");
    assert_eq!(headers["x-ratelimit-remaining"], "4");
    assert_eq!(headers["x-ratelimit-reset-after"], "1.000");
    assert!(headers["x-ratelimit-reset"].parse::<f64>().unwrap() > 1.0e9);
    assert!(!headers["x-ratelimit-bucket"].is_empty());

    // A 429 as serenity sees it.
    fake.rate_limit_next_of(&["create_message"], 1, 0.25);
    let err = channel.say(&http, "hello").await.unwrap_err();
    assert_eq!(refusal(err).0, 429);
    tokio::time::sleep(Duration::from_millis(300)).await;
    channel.say(&http, "hello").await.unwrap();
    let gaps = fake.retry_gaps();
    assert_eq!(gaps.len(), 1);
    assert_eq!(gaps[0].route, "create_message");
    assert_eq!(gaps[0].retry_after, Duration::from_millis(250));
    assert!(gaps[0].waited(), "{gaps:?}");

    // A 429 on the wire: Discord's headers and body.
    fake.rate_limit_next(1, 1.5);
    let (status, headers) = raw_post(&fake, &path, r#"{"content":"hi"}"#).await;
    assert_eq!(status, 429);
    assert_eq!(headers["retry-after"], "2");
    assert_eq!(headers["x-ratelimit-remaining"], "0");
    assert_eq!(headers["x-ratelimit-reset-after"], "1.500");
    assert_eq!(headers["x-ratelimit-scope"], "user");
    assert!(!headers["x-ratelimit-bucket"].is_empty());
    let last = fake.calls().last().cloned().unwrap();
    assert_eq!(last.status, 429);
    assert_eq!(last.retry_after, Some(Duration::from_millis(1500)));

    // Limits aimed at one route leave the others alone.
    fake.rate_limit_next_of(&["open_dm"], 1, 0.1);
    channel.say(&http, "not limited").await.unwrap();
    let err = UserId::new(id(ALICE))
        .create_dm_channel(&http)
        .await
        .unwrap_err();
    assert_eq!(refusal(err).0, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_and_interaction_responses() {
    let fake = FakeDiscord::start().await;
    let http = http(&fake);
    let guild = GuildId::new(id(GUILD_ID));

    let commands = vec![CreateCommand::new("passport")
        .description("Ask for access")
        .add_option(CreateCommandOption::new(
            serenity::all::CommandOptionType::String,
            "instance",
            "Which instance",
        ))];
    let answered = guild.set_commands(&http, commands.clone()).await.unwrap();
    assert_eq!(answered.len(), 1);
    assert_eq!(answered[0].name, "passport");
    assert_eq!(answered[0].guild_id, Some(guild));
    assert_eq!(answered[0].application_id.to_string(), APPLICATION_ID);
    let again = guild.set_commands(&http, commands).await.unwrap();
    assert_eq!(again[0].id, answered[0].id, "ids survive an overwrite");
    assert_eq!(fake.commands().len(), 1);
    assert_eq!(fake.commands()[0]["name"], "passport");

    let bad = vec![CreateCommand::new("Passport Now").description("")];
    let err = guild.set_commands(&http, bad).await.unwrap_err();
    assert_eq!(refusal(err), (400, 50035));

    // Deferred answer, then the edit of the original, then a follow-up.
    let interaction = InteractionId::new(1_800_000_000_000_000_001);
    let defer = CreateInteractionResponse::Defer(CreateInteractionResponseMessage::new());
    http.create_interaction_response(interaction, "tok-1", &defer, vec![])
        .await
        .unwrap();
    let err = http
        .create_interaction_response(interaction, "tok-1", &defer, vec![])
        .await
        .unwrap_err();
    assert_eq!(refusal(err), (400, 40060));
    assert_eq!(fake.callbacks().len(), 1);
    assert_eq!(fake.callbacks()[0].body["type"], 5);

    let original = http
        .edit_original_interaction_response(
            "tok-1",
            &EditInteractionResponse::new().content("Request 7 filed"),
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(original.content, "Request 7 filed");
    assert_eq!(fake.original_edits().len(), 1);
    assert_eq!(fake.original_edits()[0].content(), "Request 7 filed");
    assert_eq!(
        fake.original_message("tok-1"),
        Some(original.id.to_string())
    );

    let follow = http
        .create_followup_message(
            "tok-1",
            &CreateInteractionResponseFollowup::new()
                .content("Approvers were told")
                .ephemeral(true),
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(follow.content, "Approvers were told");
    assert_eq!(fake.followups().len(), 1);

    // An immediate answer with a message.
    let answer = CreateInteractionResponse::Message(
        CreateInteractionResponseMessage::new()
            .content("Pick one")
            .components(vec![CreateActionRow::Buttons(vec![CreateButton::new(
                "pick:1",
            )
            .label("One")])]),
    );
    http.create_interaction_response(
        InteractionId::new(1_800_000_000_000_000_002),
        "tok-2",
        &answer,
        vec![],
    )
    .await
    .unwrap();
    let callbacks = fake.callbacks();
    assert_eq!(callbacks[1].content(), "Pick one");
    assert_eq!(callbacks[1].custom_ids(), ["pick:1"]);

    let body: Value = fake
        .message_body(&fake.original_message("tok-2").unwrap())
        .unwrap();
    assert_eq!(body["content"], "Pick one");
}
