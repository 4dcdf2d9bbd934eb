"""Using a trained model: the predictor (eval preprocessing, batching, test-time protocols), embeddings, export."""
