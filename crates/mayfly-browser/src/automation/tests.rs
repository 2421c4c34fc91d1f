use std::io::{BufRead, BufReader, Write};
use std::sync::{Arc, Mutex};

use super::*;

/// The browser session the fake browser gives an automation client.
const ROOT: &str = "S-CLIENT";
/// A session that belongs to the driver.
const DRIVER: &str = "S-DRIVER";
/// The page that viewers see.
const PAGE: &str = "T-PAGE";

/// Every message the fake browser received, in order.
type Received = Arc<Mutex<Vec<Value>>>;

/// Starts a fake browser on an in-memory pipe pair. It returns [`ROOT`] for
/// `Target.attachToBrowserTarget` and the context `CTX` for
/// `Target.createBrowserContext`. On the test
/// methods it sends events first: `Test.attach` announces the session
/// `S-CHILD` on the viewer's page, `Test.driverEvent` sends an event on
/// the driver's session, and `Test.burst` sends 5 events on [`ROOT`].
/// `Test.silent` gets no response; every other method gets its name back.
fn fake_browser() -> (Connection, Received) {
    let (to_browser_read, to_browser_write) = std::io::pipe().unwrap();
    let (from_browser_read, mut from_browser_write) = std::io::pipe().unwrap();
    let received: Received = Arc::default();
    let log = Arc::clone(&received);
    std::thread::spawn(move || {
        let mut reader = BufReader::new(to_browser_read);
        let mut buffer = Vec::new();
        while reader.read_until(0, &mut buffer).is_ok_and(|n| n > 0) {
            buffer.pop();
            let request: Value = serde_json::from_slice(&buffer).unwrap();
            buffer.clear();
            log.lock().unwrap().push(request.clone());
            let method = request["method"].as_str().unwrap().to_string();
            let session = request.get("sessionId").cloned();
            let mut messages = Vec::new();
            match method.as_str() {
                "Test.attach" => messages.push(json!({
                    "method": "Target.attachedToTarget",
                    "params": { "sessionId": "S-CHILD", "targetInfo": { "targetId": PAGE, "type": "page" } },
                    "sessionId": session,
                })),
                "Test.driverEvent" => messages.push(json!({ "method": "Page.screencastFrame", "params": {}, "sessionId": DRIVER })),
                "Test.burst" => messages.extend((0..5).map(|n| json!({ "method": "Test.event", "params": { "n": n }, "sessionId": ROOT }))),
                _ => {}
            }
            let result = match method.as_str() {
                "Target.attachToBrowserTarget" => json!({ "sessionId": ROOT }),
                "Target.createBrowserContext" => json!({ "browserContextId": "CTX" }),
                _ => json!({ "method": method }),
            };
            let mut response = json!({ "id": request["id"], "result": result });
            if let Some(session) = session {
                response["sessionId"] = session;
            }
            if method != "Test.silent" {
                messages.push(response);
            }
            for message in messages {
                let mut bytes = serde_json::to_vec(&message).unwrap();
                bytes.push(0);
                if from_browser_write.write_all(&bytes).is_err() {
                    return;
                }
            }
        }
    });
    (Connection::start(to_browser_write, from_browser_read), received)
}

async fn open(connection: &Connection) -> Automation {
    open_with(connection, Permissions::default()).await
}

async fn open_with(connection: &Connection, permissions: Permissions) -> Automation {
    Automation::open_on(connection, &json!({ "behavior": "deny", "eventsEnabled": true }), permissions).await.unwrap()
}

async fn next(automation: &mut Automation) -> Value {
    let text = tokio::time::timeout(Duration::from_secs(5), automation.to_client()).await.expect("a message arrives").expect("the route is open");
    serde_json::from_str(&text).unwrap()
}

fn parse(reply: Option<String>) -> Value {
    serde_json::from_str(&reply.expect("an immediate reply")).unwrap()
}

fn sent(received: &Received, method: &str) -> Vec<Value> {
    received.lock().unwrap().iter().filter(|m| m["method"] == method).cloned().collect()
}

#[tokio::test]
async fn commands_get_client_session_and_ids() {
    let (connection, received) = fake_browser();
    let mut automation = open(&connection).await;
    assert_eq!(automation.from_client(r#"{"id":1,"method":"Page.navigate","params":{"url":"http://x/"}}"#).unwrap(), None);
    let response = next(&mut automation).await;
    assert_eq!(response["id"], 1, "{response}");
    assert_eq!(response["result"]["method"], "Page.navigate");
    assert!(response.get("sessionId").is_none(), "a command sent without a session is answered without one: {response}");
    let forwarded = sent(&received, "Page.navigate");
    assert_eq!(forwarded[0]["sessionId"], ROOT, "{forwarded:?}");
    assert_ne!(forwarded[0]["id"], 1, "the browser sees the connection's own id");
    assert_eq!(automation.forwarded(), 1);
}

#[tokio::test]
async fn dangerous_methods_are_rejected_or_ignored() {
    let (connection, received) = fake_browser();
    let mut automation = open(&connection).await;
    for method in ["Browser.close", "Browser.crash", "Target.setRemoteLocations", "SystemInfo.getInfo", "Tethering.bind", "Target.exposeDevToolsProtocol", "Target.sendMessageToTarget"] {
        let reply = parse(automation.from_client(&format!(r#"{{"id":7,"method":"{method}"}}"#)).unwrap());
        assert_eq!(reply["id"], 7, "{reply}");
        assert_eq!(reply["error"]["code"], SERVER_ERROR, "{reply}");
        assert!(reply["error"]["message"].as_str().unwrap().starts_with(&format!("Mayfly rejects {method}: ")), "{reply}");
    }
    for (method, url) in [("Page.navigate", "chrome://quit"), ("Target.createTarget", "chrome://inducebrowsercrashforrealz"), ("Page.navigate", "file:///etc/passwd")] {
        let reply = parse(automation.from_client(&format!(r#"{{"id":11,"method":"{method}","params":{{"url":"{url}"}}}}"#)).unwrap());
        assert!(reply["error"]["message"].as_str().unwrap().contains("only http, https and data addresses"), "{method} {url}: {reply}");
    }
    let download = parse(automation.from_client(r#"{"id":9,"method":"Browser.setDownloadBehavior","params":{"behavior":"allow","downloadPath":"/tmp"}}"#).unwrap());
    assert_eq!(download, json!({ "id": 9, "result": {} }));
    assert_eq!(automation.rejected(), 10);
    // A command that is forwarded afterwards shows that nothing above was.
    automation.from_client(r#"{"id":10,"method":"Browser.getVersion"}"#).unwrap();
    next(&mut automation).await;
    let methods: Vec<Value> = received.lock().unwrap().iter().map(|m| m["method"].clone()).collect();
    assert_eq!(methods, vec![json!("Target.attachToBrowserTarget"), json!("Browser.getVersion")]);
}

#[test]
fn url_allowed_admits_web_addresses_only() {
    for good in ["http://127.0.0.1:8080/a", "HTTPS://example.com", "about:blank", "data:text/html,hi", ""] {
        assert!(url_allowed(good), "{good}");
    }
    for bad in ["chrome://quit", "chrome://crash", "about:crash", "file:///etc/passwd", "javascript:alert(1)", "view-source:http://x", "devtools://devtools/x"] {
        assert!(!url_allowed(bad), "{bad}");
    }
}

#[tokio::test]
async fn printing_and_file_inputs_follow_permissions() {
    const PRINT: &str = r#"{"id":1,"method":"Page.printToPDF"}"#;
    const FILES: &str = r#"{"id":2,"method":"DOM.setFileInputFiles","params":{"files":["/work/a"]}}"#;
    let (connection, received) = fake_browser();
    let mut closed = open_with(&connection, Permissions::default()).await;
    let printing = parse(closed.from_client(PRINT).unwrap());
    assert!(printing["error"]["message"].as_str().unwrap().contains("transfer.printing = true"), "{printing}");
    let files = parse(closed.from_client(FILES).unwrap());
    assert!(files["error"]["message"].as_str().unwrap().contains("transfer.uploads = true"), "{files}");
    assert_eq!(closed.rejected(), 2);

    let mut open = open_with(&connection, Permissions { printing: true, uploads: true }).await;
    assert_eq!(open.from_client(PRINT).unwrap(), None, "printing is forwarded");
    next(&mut open).await;
    assert_eq!(open.from_client(FILES).unwrap(), None, "file inputs are forwarded");
    next(&mut open).await;
    assert_eq!(sent(&received, "Page.printToPDF").len(), 1);
    assert_eq!(sent(&received, "DOM.setFileInputFiles").len(), 1);
}

#[tokio::test]
async fn new_pages_open_in_windows_of_their_own() {
    let (connection, received) = fake_browser();
    let mut automation = open(&connection).await;
    automation.from_client(r#"{"id":1,"method":"Target.createTarget","params":{"url":"about:blank"}}"#).unwrap();
    next(&mut automation).await;
    assert_eq!(sent(&received, "Target.createTarget")[0]["params"], json!({ "url": "about:blank", "newWindow": true }));
    // Params that are not an object go to Chromium unchanged, which
    // rejects them.
    automation.from_client(r#"{"id":2,"method":"Target.createTarget","params":[1]}"#).unwrap();
    next(&mut automation).await;
    assert_eq!(sent(&received, "Target.createTarget")[1]["params"], json!([1]));
}

#[tokio::test]
async fn other_sessions_are_out_of_reach() {
    let (connection, received) = fake_browser();
    let mut driver_events = connection.events();
    let mut automation = open(&connection).await;
    let reply = parse(automation.from_client(&format!(r#"{{"id":3,"sessionId":"{DRIVER}","method":"Runtime.evaluate"}}"#)).unwrap());
    assert_eq!(reply["error"]["code"], UNKNOWN_SESSION, "{reply}");
    assert_eq!(reply["sessionId"], DRIVER);
    let detach = parse(automation.from_client(&format!(r#"{{"id":4,"method":"Target.detachFromTarget","params":{{"sessionId":"{DRIVER}"}}}}"#)).unwrap());
    assert_eq!(detach["error"]["code"], UNKNOWN_SESSION, "{detach}");
    assert!(sent(&received, "Runtime.evaluate").is_empty());
    assert!(sent(&received, "Target.detachFromTarget").is_empty());

    // An event on the driver's session reaches the driver, not the client.
    automation.from_client(r#"{"id":5,"method":"Test.driverEvent"}"#).unwrap();
    let response = next(&mut automation).await;
    assert_eq!(response["id"], 5, "the client receives only its response: {response}");
    let event = tokio::time::timeout(Duration::from_secs(5), driver_events.recv()).await.unwrap().unwrap();
    assert_eq!(event.session_id.as_deref(), Some(DRIVER));
}

#[tokio::test]
async fn attached_sessions_belong_to_the_client() {
    let (connection, received) = fake_browser();
    let mut automation = open(&connection).await;
    automation.from_client(r#"{"id":1,"method":"Test.attach"}"#).unwrap();
    let event = next(&mut automation).await;
    assert_eq!(event["method"], "Target.attachedToTarget", "{event}");
    assert!(event.get("sessionId").is_none(), "events on the client's browser session come without it: {event}");
    assert_eq!(next(&mut automation).await["id"], 1);

    assert_eq!(automation.from_client(r#"{"id":2,"sessionId":"S-CHILD","method":"Runtime.enable"}"#).unwrap(), None);
    let response = next(&mut automation).await;
    assert_eq!((response["id"].clone(), response["sessionId"].clone()), (json!(2), json!("S-CHILD")), "{response}");
    assert_eq!(sent(&received, "Runtime.enable")[0]["sessionId"], "S-CHILD");

}

#[tokio::test]
async fn new_contexts_get_the_download_behavior() {
    let (connection, received) = fake_browser();
    let mut automation = open(&connection).await;
    automation.from_client(r#"{"id":1,"method":"Target.createBrowserContext","params":{"disposeOnDetach":true}}"#).unwrap();
    let response = next(&mut automation).await;
    assert_eq!(response["result"]["browserContextId"], "CTX", "{response}");
    let behavior = sent(&received, "Browser.setDownloadBehavior");
    assert_eq!(behavior.len(), 1, "{behavior:?}");
    assert_eq!(behavior[0]["params"], json!({ "behavior": "deny", "eventsEnabled": true, "browserContextId": "CTX" }));
    assert!(behavior[0].get("sessionId").is_none(), "the driver's root session sets it");
}

#[tokio::test]
async fn invalid_messages_get_errors() {
    let (connection, _) = fake_browser();
    let mut automation = open(&connection).await;
    let cases = [
        ("not json", PARSE_ERROR),
        (r#"[1,2]"#, PARSE_ERROR),
        (r#"{"method":"Page.enable"}"#, INVALID_REQUEST),
        (r#"{"id":"one","method":"Page.enable"}"#, INVALID_REQUEST),
        (r#"{"id":1}"#, INVALID_REQUEST),
        (r#"{"id":1,"method":"Page.enable","sessionId":5}"#, INVALID_REQUEST),
    ];
    for (text, code) in cases {
        let reply = parse(automation.from_client(text).unwrap());
        assert_eq!(reply["error"]["code"], code, "{text}: {reply}");
    }
}

#[tokio::test]
async fn too_many_commands_in_flight_is_a_flood() {
    let (connection, _) = fake_browser();
    let mut automation = open(&connection).await;
    for id in 0..MAX_IN_FLIGHT {
        assert_eq!(automation.from_client(&format!(r#"{{"id":{id},"method":"Test.silent"}}"#)).unwrap(), None);
    }
    let flood = automation.from_client(r#"{"id":-1,"method":"Test.silent"}"#).unwrap_err();
    assert!(flood.0.contains(&MAX_IN_FLIGHT.to_string()), "{flood}");
}

#[tokio::test]
async fn route_ends_when_its_queue_is_full() {
    let (connection, _) = fake_browser();
    let mut route = connection.route(2, 1 << 20);
    let id = route.send(json!({ "method": "Target.attachToBrowserTarget" })).unwrap();
    assert_eq!(route.recv().await.unwrap()["id"], id);
    assert!(route.owns(ROOT));
    route.send(json!({ "method": "Test.burst", "sessionId": ROOT })).unwrap();
    // The fake replies in order, so once this call returns, the reader has
    // dispatched the burst. The call also shows that the driver works on.
    let result = connection.call("Browser.getVersion", json!({}), None).await.unwrap();
    assert_eq!(result["method"], "Browser.getVersion", "the driver's calls still work");
    let mut delivered = 0;
    while tokio::time::timeout(Duration::from_secs(5), route.recv()).await.unwrap().is_some() {
        delivered += 1;
    }
    assert_eq!(delivered, 2, "the queue held 2 messages");
    assert!(route.overflowed());
}
