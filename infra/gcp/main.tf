# obque on Google Cloud: a private bucket of queue files, the broker as a 2nd-gen Cloud
# Function (many requests per instance share one group-commit engine), callable only by
# the principals named in var.invokers, and one queue file per queue, created with the
# function URL in its broker record.
#
#   terraform apply  ->  gs://BUCKET/NAME.json  +  https://...run.app  (ID-token auth)

locals {
  bucket_name = coalesce(var.bucket_name, "${var.project}-${var.name}-queues")
  source_dir  = coalesce(var.source_dir, "${path.module}/../../.build/gcp-function")
  apis = var.enable_apis ? toset([
    "artifactregistry.googleapis.com",
    "cloudbuild.googleapis.com",
    "cloudfunctions.googleapis.com",
    "run.googleapis.com",
    "storage.googleapis.com",
  ]) : toset([])

  # The broker may touch each queue's file and the objects under its NAME.json.d/
  # prefix (intents, spilled payloads), and list only under those prefixes.
  queue_access = join(" || ", flatten([
    for q in var.queues : [
      "resource.name == \"projects/_/buckets/${local.bucket_name}/objects/${q}.json\"",
      "resource.name.startsWith(\"projects/_/buckets/${local.bucket_name}/objects/${q}.json.d/\")",
      "api.getAttribute(\"storage.googleapis.com/objectListPrefix\", \"\").startsWith(\"${q}.json.d/\")",
    ]
  ]))
}

resource "google_project_service" "apis" {
  for_each = local.apis

  project            = var.project
  service            = each.key
  disable_on_destroy = false
}

resource "google_storage_bucket" "queues" {
  project  = var.project
  name     = local.bucket_name
  location = var.region

  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  # The queue files are data: deleting the bucket must fail while it holds them.
  force_destroy = false

  # Every commit overwrites the queue file: neither old versions nor soft-deleted
  # copies should pile up, one per commit.
  versioning {
    enabled = false
  }
  soft_delete_policy {
    retention_duration_seconds = 0
  }

  depends_on = [google_project_service.apis]
}

# Function sources live apart from the queues: the broker cannot read or write them.
resource "google_storage_bucket" "sources" {
  project  = var.project
  name     = "${local.bucket_name}-src"
  location = var.region

  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = true

  lifecycle_rule {
    condition {
      age = 30
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_project_service.apis]
}

data "archive_file" "source" {
  type        = "zip"
  source_dir  = local.source_dir
  output_path = "${local.source_dir}.zip"
}

resource "google_storage_bucket_object" "source" {
  name   = "function-${data.archive_file.source.output_sha256}.zip"
  bucket = google_storage_bucket.sources.name
  source = data.archive_file.source.output_path
}

resource "google_service_account" "broker" {
  project      = var.project
  account_id   = "${var.name}-broker"
  display_name = "obque broker (${var.name})"
  description  = "Runs the obque broker function: its queue objects, nothing else."
}

resource "google_storage_bucket_iam_member" "broker_queue_objects" {
  bucket = google_storage_bucket.queues.name
  role   = "roles/storage.objectUser"
  member = google_service_account.broker.member

  condition {
    title       = "obque-queue-objects"
    description = "The queue files and their NAME.json.d/ prefixes only."
    expression  = local.queue_access
  }
}

resource "google_cloudfunctions2_function" "broker" {
  project     = var.project
  name        = "${var.name}-broker"
  location    = var.region
  description = "obque broker: serves the queues in gs://${local.bucket_name}/ over HTTP"

  build_config {
    runtime         = "python312"
    entry_point     = "handler"
    service_account = var.build_service_account
    source {
      storage_source {
        bucket = google_storage_bucket.sources.name
        object = google_storage_bucket_object.source.name
      }
    }
  }

  service_config {
    max_instance_count               = var.max_instances
    max_instance_request_concurrency = var.concurrency
    available_cpu                    = var.cpu
    available_memory                 = var.memory
    timeout_seconds                  = var.timeout_seconds
    ingress_settings                 = var.ingress
    all_traffic_on_latest_revision   = true
    service_account_email            = google_service_account.broker.email
    environment_variables = {
      OBQUE_ROOT = "gs://${google_storage_bucket.queues.name}/"
      # The service account may touch only these queues' objects (not list the bucket).
      OBQUE_QUEUES = join(",", var.queues)
      # No FUNCTION_USE_ASGI: the target is registered with functions_framework.aio.http,
      # which makes it ASGI however the runtime launches functions-framework.
    }
  }

  depends_on = [google_project_service.apis, google_storage_bucket_iam_member.broker_queue_objects]
}

# Callers are named principals only: never allUsers or allAuthenticatedUsers.
resource "google_cloud_run_v2_service_iam_member" "invokers" {
  for_each = toset(var.invokers)

  project  = var.project
  location = var.region
  name     = google_cloudfunctions2_function.broker.service_config[0].service
  role     = "roles/run.invoker"
  member   = each.value
}

# Callers find the broker by reading the queue file: that file, nothing else.
resource "google_storage_bucket_iam_member" "invokers_read_queue_files" {
  for_each = toset(var.invokers)

  bucket = google_storage_bucket.queues.name
  role   = "roles/storage.objectViewer"
  member = each.value

  condition {
    title       = "obque-queue-files"
    description = "Read the queue files (to find the broker URL)."
    expression  = join(" || ", [for q in var.queues : "resource.name == \"projects/_/buckets/${local.bucket_name}/objects/${q}.json\""])
  }
}

module "queue_file" {
  source   = "./modules/queue-file"
  for_each = toset(var.queues)

  name = each.key
  # The run.app URI passes request paths through unchanged (the cloudfunctions.net URL
  # puts the function name in front of them).
  broker_url = google_cloudfunctions2_function.broker.service_config[0].uri
  broker_id  = "cloudfunctions:${google_cloudfunctions2_function.broker.name}"
  config = {
    lease_seconds = var.lease_seconds
    max_attempts  = var.max_attempts
  }
}

# Created once with the function URL in its broker record. After that the queue owns the
# object: every commit rewrites it, so Terraform must neither "fix" its content nor replace
# it, and never delete it (take it out of state first: docs/deploy.md).
resource "google_storage_bucket_object" "queue" {
  for_each = toset(var.queues)

  bucket       = google_storage_bucket.queues.name
  name         = "${each.key}.json"
  content_type = "application/json"
  content      = module.queue_file[each.key].content

  lifecycle {
    prevent_destroy = true
    ignore_changes  = [content, detect_md5hash]
  }
}
