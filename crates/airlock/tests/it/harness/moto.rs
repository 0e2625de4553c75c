//! moto's S3 server (PyPI `moto[server]`) on a free loopback port: the object store of the S3
//! backend's tests. It checks no signatures; credentials are set only so the client signs.

use std::process::{Child, Command, Stdio};

use super::registry::{free_port, wait_ready};

pub struct Moto {
    pub endpoint: String,
    child: Child,
}

impl Moto {
    pub fn start() -> Moto {
        let server = super::require("moto_server", "moto[server] (PyPI; README's test command installs it)");
        let port = free_port();
        let mut child = Command::new(server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        assert!(wait_ready(port, &mut child), "moto_server did not start on port {port}");
        Moto { endpoint: format!("http://127.0.0.1:{port}"), child }
    }

    /// Creates a bucket.
    pub fn bucket(&self, name: &str) {
        let url = format!("{}/{name}", self.endpoint);
        let status = super::proxy::runtime().block_on(async { reqwest::Client::new().put(&url).send().await.expect("moto answers").status() });
        assert!(status.is_success(), "creating bucket {name}: {status}");
    }

    /// The variables an airlock talking to this server needs.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ALLOW_HTTP", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// Writes an object as an S3 client does (boto3, signed), as another replica would.
    pub fn put_object(&self, bucket: &str, key: &str, body: &str) {
        let python = super::require("python3", "python3");
        let script = "import sys, boto3\n\
            s3 = boto3.client('s3', endpoint_url=sys.argv[1], region_name='us-east-1', aws_access_key_id='testing', aws_secret_access_key='testing')\n\
            s3.put_object(Bucket=sys.argv[2], Key=sys.argv[3], Body=sys.argv[4].encode())";
        let mut command = Command::new(python);
        command.args(["-c", script, &self.endpoint, bucket, key, body]);
        super::run_command(command, None).success();
    }

    /// The keys of the objects under `prefix` (the first thousand).
    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let url = format!("{}/{bucket}?list-type=2&prefix={prefix}", self.endpoint);
        let body = super::proxy::runtime().block_on(async { reqwest::Client::new().get(&url).send().await.expect("moto answers").text().await.unwrap() });
        body.split("<Key>").skip(1).filter_map(|rest| rest.split_once("</Key>").map(|(key, _)| key.to_owned())).collect()
    }

    /// The multipart uploads the bucket holds, not completed nor aborted (none may be left).
    pub fn open_multipart_uploads(&self, bucket: &str) -> usize {
        let url = format!("{}/{bucket}?uploads", self.endpoint);
        let body = super::proxy::runtime().block_on(async { reqwest::Client::new().get(&url).send().await.expect("moto answers").text().await.unwrap() });
        body.matches("<UploadId>").count()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
