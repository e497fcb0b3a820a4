package org.fhirspine.testserver;

import org.springframework.boot.SpringApplication;
import org.springframework.boot.WebApplicationType;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Configuration;
import org.springframework.context.annotation.Import;
import org.springframework.context.support.PropertySourcesPlaceholderConfigurer;

/**
 * Entry point of the fhir-spine test server: HAPI FHIR JPA (R4) on an in-memory H2 database,
 * served by an embedded Tomcat on the loopback interface only.
 *
 * <p>Spring Boot is used only to run the embedded servlet container and to read properties;
 * no auto-configuration is enabled, so that HAPI's own Spring configuration is the only one
 * that creates the data source, the JPA layer and the Batch2 machinery.
 *
 * <p>Options (as {@code --name=value} arguments or system properties):
 * <ul>
 *   <li>{@code server.port} - TCP port on 127.0.0.1 (0 = any free port; default 8080)</li>
 *   <li>{@code fhirspine.client-id-strategy} - ALPHANUMERIC (HAPI default) or ANY</li>
 * </ul>
 */
@Configuration
@Import({HapiJpaServerConfig.class, WebServerConfig.class})
public class HapiTestServer {

	/** Resolves ${...} in @Value (normally registered by Boot's auto-configuration). */
	@Bean
	public static PropertySourcesPlaceholderConfigurer propertySourcesPlaceholderConfigurer() {
		return new PropertySourcesPlaceholderConfigurer();
	}

	public static void main(String[] args) {
		SpringApplication app = new SpringApplication(HapiTestServer.class);
		app.setWebApplicationType(WebApplicationType.SERVLET);
		app.run(args);
	}
}
