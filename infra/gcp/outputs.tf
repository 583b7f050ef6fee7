output "queue_uri" {
  description = "The first queue's file: give it to `obque push` and `obque work`."
  value       = "gs://${google_storage_bucket.queues.name}/${var.queues[0]}.json"
}

output "queue_uris" {
  description = "Every queue file, by queue name."
  value       = { for q in var.queues : q => "gs://${google_storage_bucket.queues.name}/${q}.json" }
}

output "function_url" {
  description = "The broker URL, as advertised in the queue files (callers present a Google ID token)."
  value       = google_cloudfunctions2_function.broker.service_config[0].uri
}

output "bucket" {
  value = google_storage_bucket.queues.name
}

output "broker_service_account" {
  value = google_service_account.broker.email
}

output "broker_id" {
  description = "How the queue files' broker record names this deployment (infra/queue_file.py --broker-id)."
  value       = "cloudfunctions:${google_cloudfunctions2_function.broker.name}"
}
